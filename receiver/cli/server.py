"""The long-running commands: `serve` (web + workers) and `worker` (workers only); `demo` is in cli/demo.py."""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

import click
from flask import Flask
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.server import MultiSocketServer, TcpWSGIServer
from waitress.task import ThreadedTaskDispatcher

from receiver.cli.context import CliState, pass_state, setup_logging
from receiver.config import Settings
from receiver.ops.maintenance import Role, start_loops
from receiver.services import services
from receiver.worker.dispatch import drain

log = logging.getLogger("receiver")

FD_HEADROOM = 256  # descriptors beyond the connections: database, thumbnails, temp files, pipes, the ICE/OSS clients
REAP_LOG_SECONDS = 60.0  # at most one log line a minute about the connections cut off


class _DeadlineChannel(HTTPChannel):
    """A waitress channel whose request must arrive whole within `request_seconds` of its first byte.

    waitress's own `channel_timeout` counts inactivity, so a client that sends one byte every few seconds keeps
    its channel forever. Here the clock of a request starts at its first byte (at the accept, for a
    connection's first request) and stops when waitress has read it whole and hands it to a worker thread;
    `_DeadlineServer.maintenance` closes the channels past the limit. Idle keep-alive time between requests is
    still waitress's `channel_timeout`.
    """

    def __init__(self, server: Any, sock: Any, addr: Any, adj: Any, map: Any = None) -> None:  # noqa: A002
        super().__init__(server, sock, addr, adj, map)
        self.request_started: float | None = time.monotonic()

    def received(self, data: bytes) -> bool:
        before = self.request
        ok: bool = super().received(data)
        if self.request is None:
            self.request_started = None  # read whole (or nothing pending): a worker thread has it
        elif self.request is not before and (before is not None or self.request_started is None):
            self.request_started = time.monotonic()  # a new request began (a first one keeps the accept's time)
        return ok


class _DeadlineServer(TcpWSGIServer):
    channel_class = _DeadlineChannel
    request_seconds = 0.0
    _cut = 0
    _cut_logged_at = 0.0

    def maintenance(self, now: float) -> None:
        super().maintenance(now)  # waitress's inactivity timeout
        if self.request_seconds <= 0:
            return
        cutoff = time.monotonic() - self.request_seconds
        for channel in list(self.active_channels.values()):
            started = getattr(channel, "request_started", None)
            if started is not None and started < cutoff and not channel.requests and not channel.will_close:
                channel.will_close = True  # closed by the loop on its next pass, as waitress's own timeout does
                self._cut += 1
        mono = time.monotonic()
        if self._cut and mono - self._cut_logged_at >= REAP_LOG_SECONDS:
            log.info("closed %d connections that sent no complete request within %g s (RECEIVER_WEB_REQUEST_SECONDS)",
                     self._cut, self.request_seconds)
            self._cut, self._cut_logged_at = 0, mono


def allowed_connections(wanted: int) -> int:
    """Raise the open-file soft limit to what `wanted` connections need (up to the hard limit); return the
    number of connections the limit allows, logging when that is fewer than `wanted`."""
    try:
        import resource
    except ImportError:  # not POSIX: nothing to raise
        return wanted
    need = wanted + FD_HEADROOM
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            log.debug("raised the open-file soft limit from %d to %d", soft, target)
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, exc)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return wanted
    allowed = max(soft - FD_HEADROOM, soft // 2)
    log.warning("the open-file limit (%d, hard %d) allows about %d connections, not the %d of "
                "RECEIVER_WEB_CONNECTIONS: raise `ulimit -n` (LimitNOFILE= under systemd)", soft, hard, allowed, wanted)
    return allowed


def create_server(app: Flask, host: str, port: int, settings: Settings) -> Any:
    """waitress as `serve` runs it: many connections, a total time limit per request, poll() instead of select().

    Only a request read whole reaches a worker thread (waitress buffers headers and body in its event loop), so
    slow or idle clients cost a file descriptor and some memory each, never a thread; what they must not do is
    fill the connection limit, hence the high limit and the per-request time limit.
    """
    connections = allowed_connections(settings.web_connections)
    adj = Adjustments(
        host=host, port=port, threads=settings.web_threads, ident="receiver", clear_untrusted_proxy_headers=True,
        # The map holds the listening socket(s) and the trigger besides the connections.
        connection_limit=connections + 4,
        asyncore_use_poll=True,  # select() fails on descriptors above 1024
        cleanup_interval=1,  # how often the timeouts are checked: a pass over the channels, cheap
        max_request_header_size=64 * 1024,  # what a slow client can park in memory: headers
        # ...and body, well above what the app refuses itself (RECEIVER_MAX_CALLBACK_BYTES: 413, or the path's
        # 404 first, in the error object), so waitress's own plain-text 413 only meets bodies no client needs;
        # waitress spools large bodies to a temporary file rather than memory.
        max_request_body_size=max(16 * settings.max_callback_bytes, 16 << 20),
    )
    dispatcher = ThreadedTaskDispatcher()
    dispatcher.set_thread_count(adj.threads)
    socket_map: dict[int, Any] = {}
    servers = []
    for sockinfo in adj.listen:  # waitress.create_server, with our server class (TCP only)
        server = _DeadlineServer(app, socket_map, dispatcher=dispatcher, adj=adj, sockinfo=sockinfo)
        server.request_seconds = settings.web_request_seconds
        servers.append(server)
    if len(servers) == 1:
        return servers[0]
    return MultiSocketServer(socket_map, adj, [(s.effective_host, s.effective_port) for s in servers], dispatcher,
                             servers[-1].log_info)


def run_server(app: Flask, host: str, port: int) -> None:
    svc = services(app)
    settings = svc.settings
    open_accounts = [a.alias for a in svc.account_list() if not a.callback_token and not a.callback_auth_keys]
    if open_accounts and svc.account_list().source is not None:
        log.warning("accounts %s have neither a callback token nor auth keys: anyone can post callbacks for them "
                    "(they are verified with ICE, but they cost ICE API calls)", ", ".join(open_accounts))
    elif open_accounts:
        log.warning("no RECEIVER_CALLBACK_TOKEN or RECEIVER_CALLBACK_AUTH_KEYS: anyone can post callbacks "
                    "(they are verified with ICE, but they cost ICE API calls)")
    server = create_server(app, host, port, settings)
    click.echo(f"receiver listening on http://{host}:{port}/", err=True)
    server.run()


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
