"""gunicorn settings for the receiver web process (`gunicorn -c gunicorn.conf.py receiver.wsgi:app`).

Threads per worker because a callback mostly waits on the database commit; several processes because
Flask's JSON and routing need the GIL. Everything can be overridden with GUNICORN_CMD_ARGS.
"""

from __future__ import annotations

import os
from typing import Any

bind = [os.environ.get("RECEIVER_BIND", f"0.0.0.0:{os.environ.get('PORT', '8000')}")]
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
threads = int(os.environ.get("RECEIVER_WEB_THREADS", "8"))
# The app sizes what holds a thread for long (GET /v1/stream: RECEIVER_STREAM_CLIENTS, by default half the
# threads) from the same variable: make it say what gunicorn runs.
os.environ["RECEIVER_WEB_THREADS"] = str(threads)
# ICE gives up on a callback after 3 s; a request still running after 30 s is stuck, not slow.
timeout = 30
# SIGTERM: stop accepting, let in-flight requests finish for up to this long, then exit (worker_exit below
# stops the dispatcher, so in-process events finish or stay pending in the inbox).
graceful_timeout = 25
keepalive = 5
# Each worker builds its own app (engine pool, broker connection) after the fork, never shares them.
preload_app = False
accesslog = os.environ.get("RECEIVER_ACCESS_LOG") or None
errorlog = "-"
loglevel = os.environ.get("RECEIVER_LOG_LEVEL", "info").lower()
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
# gunicorn >= 24's control socket lives in $HOME, which the image's non-root user cannot write; unused here.
control_socket_disable = True


def post_worker_init(worker: Any) -> None:
    # Threads do not survive a fork, so background work starts here, in each worker; which work a web
    # process runs is decided in receiver/ops/maintenance.py (role "web").
    from receiver.ops.maintenance import Role, start_loops
    from receiver.services import services

    start_loops(services(worker.wsgi), Role.WEB)


def worker_exit(server: Any, worker: Any) -> None:
    from receiver.services import services

    wsgi = getattr(worker, "wsgi", None)
    if wsgi is not None:
        services(wsgi).close()
