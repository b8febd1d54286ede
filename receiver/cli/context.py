"""What every command gets through ``ctx.obj``: the settings (from the environment unless handed in) and the
app built from them once, with its schema checked."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import click
from flask import Flask

from receiver.accounts import load_accounts
from receiver.app import create_app
from receiver.config import ConfigError, Settings
from receiver.db.migrate import SchemaOutOfDate, ensure_schema
from receiver.services import Services, services


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)


@dataclass
class CliState:
    """Tests pass ``obj=CliState(settings)`` to ``CliRunner.invoke``; the console script reads the environment."""

    given: Settings | None = None
    _app: Flask | None = field(default=None, init=False)

    @property
    def settings(self) -> Settings:
        if self.given is None:
            try:
                self.given = Settings.from_env()
                # The accounts file is checked here, before any command does anything: one line naming the
                # file, the account and the key (product.md section 7).
                load_accounts(self.given)
            except ConfigError as e:
                self.given = None
                raise click.ClickException(str(e)) from None
        return self.given

    def app(self) -> Flask:
        """The app, its schema current (SQLite migrates itself; other databases must have been upgraded)."""
        if self._app is None:
            try:
                app = create_app(self.settings)
            except ConfigError as e:
                raise click.ClickException(str(e)) from None
            try:
                ensure_schema(services(app).engine)
            except SchemaOutOfDate as e:
                services(app).close()
                raise click.ClickException(str(e)) from None
            self._app = app
        return self._app

    @contextmanager
    def services(self) -> Iterator[Services]:
        """For one-shot commands: the app's Services, closed when the command ends."""
        setup_logging(self.settings.log_level)
        svc = services(self.app())
        try:
            yield svc
        finally:
            svc.close()
            self._app = None


pass_state = click.make_pass_decorator(CliState, ensure=True)
