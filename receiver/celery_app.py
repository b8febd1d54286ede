"""Celery on Redis (RECEIVER_QUEUE=celery), in the pattern of Flask's own Celery example.

Every task runs inside the Flask app context and calls the same process_event as the thread pool. The task
takes only the event id: the inbox row is the message, the broker only says "look at row N now". Late acks
plus reject-on-worker-lost give a killed worker's message back to the broker; the claim/lease in
process_event makes any second delivery a no-op, and the sweeper (dispatch.CeleryDispatcher) re-dispatches
whatever the broker lost. Nothing here connects at import time: apps are built by the functions below.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from celery import Celery, Task
from celery.signals import worker_process_init, worker_ready, worker_shutdown
from flask import Flask, current_app

from .config import Settings

log = logging.getLogger(__name__)

TASK_NAME = "receiver.process_event"
QUEUE = "receiver"
POOLS = ("prefork", "threads", "solo")


def celery_config(settings: Settings) -> dict[str, Any]:
    return {
        "broker_url": settings.broker_url,
        "task_default_queue": QUEUE,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # One message reserved per process: a long backlog stays in Redis, not in a worker that may die.
        "worker_prefetch_multiplier": 1,
        "task_ignore_result": True,
        "result_backend": None,
        "broker_connection_retry_on_startup": True,
        # Publishing happens off the request thread, but a dead broker should still fail fast: the sweeper
        # re-dispatches anything whose message never made it.
        "broker_connection_timeout": 2.0,
        "task_publish_retry_policy": {"max_retries": 2, "interval_start": 0, "interval_step": 0.2,
                                      "interval_max": 0.5},
        # Redis redelivers an unacked message after this; the sweeper usually gets there first (lease).
        "broker_transport_options": {"visibility_timeout": 3600},
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
    }


def make_celery(settings: Settings) -> Celery:
    """A client-only app for publishing (the web process): send_task by name needs no task code."""
    app = Celery("receiver", set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


def celery_init_app(app: Flask) -> Celery:
    """Flask's pattern: a Task base class that enters the app context, and the app kept in extensions."""

    class FlaskTask(Task):
        def __call__(self, *args: object, **kwargs: object) -> object:
            with app.app_context():
                return self.run(*args, **kwargs)

    settings: Settings = app.extensions["receiver"].settings
    celery = Celery(app.name, task_cls=FlaskTask)
    celery.conf.update(celery_config(settings))
    celery.set_default()
    celery.task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)(
        process_event_task
    )
    app.extensions["celery"] = celery
    return celery


def process_event_task(task: Task, event_id: int) -> str:
    from .pipeline import process_event

    svc = current_app.extensions["receiver"]
    outcome = process_event(svc, int(event_id))
    if outcome.retry_in is not None:
        # A countdown message is the fast path for the retry; if it is lost, the sweeper finds the row.
        try:
            task.apply_async((event_id,), countdown=outcome.retry_in)
        except Exception:
            log.warning("event %s: could not schedule the retry; the sweeper will", event_id)
    return outcome.status


def run_worker(app: Flask, pool: str, concurrency: int, loglevel: str = "INFO") -> None:
    """`receiver worker` with RECEIVER_QUEUE=celery: a Celery worker plus the inbox sweeper thread."""
    svc = app.extensions["receiver"]
    celery = celery_init_app(app)

    def after_fork(**_: Any) -> None:
        # Pool children must not share the parent's database sockets (SQLAlchemy's documented recipe).
        svc.engine.dispose(close=False)

    def ready(**_: Any) -> None:
        # Started once the pool has forked, so the children never inherit these threads.
        svc.dispatcher.start_sweeper()

    def shutdown(**_: Any) -> None:
        svc.dispatcher.stop()

    worker_process_init.connect(after_fork, weak=False)
    worker_ready.connect(ready, weak=False)
    worker_shutdown.connect(shutdown, weak=False)
    argv = [
        "worker", f"--pool={pool}", f"--concurrency={max(1, concurrency)}", f"--loglevel={loglevel}",
        "-Q", QUEUE, f"--hostname=receiver-{os.getpid()}@{socket.gethostname()}",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]
    try:
        celery.worker_main(argv)
    finally:
        svc.close()
