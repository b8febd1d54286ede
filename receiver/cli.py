"""The `receiver` command line (product.md section 4)."""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Any

import click
from flask import Flask

from .config import ConfigError, Settings

log = logging.getLogger("receiver")


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as e:
        raise click.ClickException(str(e)) from None


def _app(settings: Settings) -> Flask:
    from . import create_app
    from .db import SchemaOutOfDate, ensure_schema

    app = create_app(settings)
    try:
        ensure_schema(app.extensions["receiver"].engine)
    except SchemaOutOfDate as e:
        raise click.ClickException(str(e)) from None
    return app


@click.group()
def main() -> None:
    """Receiver for Alibaba Cloud ICE live snapshot callbacks."""


@main.group()
def db() -> None:
    """Database schema commands."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply migrations (Alembic, migrations/)."""
    from .db import current_revision, make_engine, upgrade

    settings = _settings()
    engine = make_engine(settings.database_url)
    upgrade(engine, revision)
    click.echo(f"database at revision {current_revision(engine)}")
    engine.dispose()


def run_server(app: Flask, host: str, port: int) -> None:
    from waitress import serve as waitress_serve

    settings: Settings = app.extensions["receiver"].settings
    if not settings.callback_token and not settings.callback_auth_keys:
        log.warning("no RECEIVER_CALLBACK_TOKEN or RECEIVER_CALLBACK_AUTH_KEYS: anyone can post callbacks "
                    "(they are verified with ICE, but they cost ICE API calls)")
    click.echo(f"receiver listening on http://{host}:{port}/", err=True)
    threads = int(os.environ.get("RECEIVER_WEB_THREADS", "16"))
    waitress_serve(app, host=host, port=port, threads=threads, ident="receiver", clear_untrusted_proxy_headers=True)


def _raise_system_exit(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
def serve(host: str, port: int) -> None:
    """Web + in-process workers (migrates the embedded database first)."""
    settings = _settings()
    _setup_logging(settings.log_level)
    app = _app(settings)
    svc = app.extensions["receiver"]
    # RECEIVER_WORKERS=0: web only; events wait in the inbox for `receiver worker` processes.
    if svc.dispatcher is not None and settings.workers > 0:
        svc.dispatcher.start()
    from .reconcile import start_reconciler

    start_reconciler(svc)  # reconcile every RECEIVER_RECONCILE_SECONDS, prune per RECEIVER_RETENTION_DAYS
    # SIGTERM (systemd, docker stop, a supervisor) ends the server like Ctrl-C: the finally below stops the
    # workers (and a process pool's children) instead of the interpreter dying around them.
    signal.signal(signal.SIGTERM, _raise_system_exit)
    try:
        run_server(app, host, port)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the shutdown short
        svc.close()


@main.command()
@click.option("--once", is_flag=True, help="Process every due event, then exit.")
@click.option("--pool", type=click.Choice(["prefork", "threads", "solo"]), default="prefork", show_default=True,
              help="Celery pool (RECEIVER_QUEUE=celery); RECEIVER_WORKERS sets its concurrency.")
def worker(once: bool, pool: str) -> None:
    """Workers only: process events from the inbox (a Celery worker when RECEIVER_QUEUE=celery)."""
    import threading

    from .dispatch import drain

    settings = _settings()
    _setup_logging(settings.log_level)
    app = _app(settings)
    svc = app.extensions["receiver"]
    if once:
        click.echo(f"processed {drain(svc, timeout=3600)} events")
        svc.close()
        return
    from .reconcile import start_reconciler

    # Workers are where the reconciler and retention run in a scale-out deployment (gunicorn web processes
    # only record and dispatch); a lease keeps each to one worker at a time (leases.py).
    start_reconciler(svc)
    if settings.queue == "celery":
        from .celery_app import run_worker

        run_worker(app, pool, settings.workers or 1, settings.log_level.upper())
        return
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    svc.dispatcher.start()
    click.echo(f"worker running with {settings.workers} threads", err=True)
    stop.wait()
    svc.close()


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--interval", default=5.0, show_default=True, help="Seconds between simulated snapshots.")
def demo(host: str, port: int, interval: float) -> None:
    """Everything local: fake ICE + fake OSS + a simulated snapshot job feeding `serve`."""
    from .demo import run_demo

    _setup_logging("INFO")
    run_demo(host, port, interval)


from .cli_ops import register  # noqa: E402 - the operator commands need `main` defined above

register(main)
from .backfill import backfill_signals  # noqa: E402 - same reason

main.add_command(backfill_signals)

if __name__ == "__main__":  # pragma: no cover
    main()
