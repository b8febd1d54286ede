"""The long-running commands: `serve` (web + workers), `worker` (workers only) and `demo`."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

import click
from flask import Flask

from receiver.cli.context import CliState, pass_state, setup_logging
from receiver.ops.maintenance import Role, start_loops
from receiver.services import services
from receiver.worker.dispatch import drain

log = logging.getLogger("receiver")


def run_server(app: Flask, host: str, port: int) -> None:
    from waitress import serve as waitress_serve

    settings = services(app).settings
    if not settings.callback_token and not settings.callback_auth_keys:
        log.warning("no RECEIVER_CALLBACK_TOKEN or RECEIVER_CALLBACK_AUTH_KEYS: anyone can post callbacks "
                    "(they are verified with ICE, but they cost ICE API calls)")
    click.echo(f"receiver listening on http://{host}:{port}/", err=True)
    waitress_serve(app, host=host, port=port, threads=settings.web_threads, ident="receiver",
                   clear_untrusted_proxy_headers=True)


def _raise_system_exit(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@pass_state
def serve(state: CliState, host: str, port: int) -> None:
    """Web + in-process workers (migrates the embedded database first)."""
    setup_logging(state.settings.log_level)
    app = state.app()
    svc = services(app)
    start_loops(svc, Role.SERVE)
    # SIGTERM (systemd, docker stop, a supervisor) ends the server like Ctrl-C: the finally below stops the
    # workers (and a process pool's children) instead of the interpreter dying around them.
    signal.signal(signal.SIGTERM, _raise_system_exit)
    try:
        run_server(app, host, port)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the shutdown short
        svc.close()


@click.command()
@click.option("--once", is_flag=True, help="Process every due event, then exit.")
@click.option("--pool", type=click.Choice(["prefork", "threads", "solo"]), default="prefork", show_default=True,
              help="Celery pool (RECEIVER_QUEUE=celery); RECEIVER_WORKERS sets its concurrency.")
@pass_state
def worker(state: CliState, once: bool, pool: str) -> None:
    """Workers only: process events from the inbox (a Celery worker when RECEIVER_QUEUE=celery)."""
    settings = state.settings
    setup_logging(settings.log_level)
    app = state.app()
    svc = services(app)
    if once:
        click.echo(f"processed {drain(svc, timeout=3600)} events")
        svc.close()
        return
    start_loops(svc, Role.WORKER)
    if settings.queue == "celery":
        from receiver.worker.celery import run_worker  # celery is an optional dependency

        run_worker(app, pool, settings.workers or 1, settings.log_level.upper())
        return
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    click.echo(f"worker running with {settings.workers} threads", err=True)
    stop.wait()
    svc.close()


COMMANDS = (serve, worker)
