"""`receiver db ...`: schema commands."""

from __future__ import annotations

import click

from receiver.cli.context import CliState, pass_state
from receiver.db.engine import make_engine
from receiver.db.migrate import current_revision, upgrade


@click.group()
def db() -> None:
    """Database schema commands."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@pass_state
def db_upgrade(state: CliState, revision: str) -> None:
    """Apply migrations (Alembic; they ship inside the package)."""
    engine = make_engine(state.settings.database_url)
    try:
        upgrade(engine, revision)
        click.echo(f"database at revision {current_revision(engine)}")
    finally:
        engine.dispose()
