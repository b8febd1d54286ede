"""Prometheus metrics: one CollectorRegistry per Services (so many apps in one process never collide).

The pipeline reports through ``observe_stage``/``stage``/``count_thumbnail_bytes`` with its Services;
vendor adapters, which have no Services, report calls through ``count_call`` into process-wide counters
that every registry exposes. Event counts by status and the queue depth are read from the database at
scrape time (the inbox table is the truth, whichever process did the work).

With Celery workers in other processes, their stage histograms live there; the web's /metrics still shows
events by status and queue depth, which is what alerting needs.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from flask import Flask, Response, current_app, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from .models import Event, utcnow

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from .services import Services

STAGES = ("verify", "resolve", "fetch", "thumbnail", "store", "index", "process")
_STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

_calls_lock = threading.Lock()
_calls: dict[tuple[str, str, str], int] = {}  # (service, operation, outcome) -> count, process-wide


def count_call(service: str, operation: str, error: str | None = None) -> None:
    """One call to ICE or OSS; ``error`` is the receiver's error code when it failed."""
    key = (service, operation, error or "ok")
    with _calls_lock:
        _calls[key] = _calls.get(key, 0) + 1


class _CallsCollector(Collector):
    def collect(self) -> Iterable[Metric]:
        fam = CounterMetricFamily("receiver_external_calls", "Calls to ICE and OSS by operation and outcome",
                                  labels=["service", "operation", "outcome"])
        with _calls_lock:
            items = sorted(_calls.items())
        for (service, op, outcome), n in items:
            fam.add_metric([service, op, outcome], n)
        yield fam


class _InboxCollector(Collector):
    def __init__(self, svc: Services) -> None:
        self.svc = svc

    def collect(self) -> Iterable[Metric]:
        from .queries import due_events, events_by_status

        now = utcnow()
        with self.svc.readers() as s:
            counts = events_by_status(s)
            due = s.execute(select(func.count()).select_from(Event).where(due_events(now, now))).scalar_one()
        fam = GaugeMetricFamily("receiver_events", "Events in the inbox by status", labels=["status"])
        for status, n in counts.items():
            fam.add_metric([status], n)
        yield fam
        yield GaugeMetricFamily("receiver_queue_depth", "Events due to run now that no worker holds", value=due)


class Metrics:
    def __init__(self, svc: Services) -> None:
        r = self.registry = CollectorRegistry()
        self.callbacks = Counter("receiver_callbacks", "Callback requests by HTTP status and answer",
                                 ["status", "answer"], registry=r)
        self.requests = Counter("receiver_http_requests", "Read API requests by route and status",
                                ["route", "status"], registry=r)
        self.stage_seconds = Histogram("receiver_stage_seconds", "Pipeline stage durations", ["stage"],
                                       buckets=_STAGE_BUCKETS, registry=r)
        self.thumbnail_bytes = Counter("receiver_thumbnail_bytes", "Thumbnail bytes written and served",
                                       ["direction"], registry=r)
        r.register(_CallsCollector())
        r.register(_InboxCollector(svc))
        # Children looked up once: labels() costs a lock and a tuple build per call, ~10 calls per frame.
        self.stages = {name: self.stage_seconds.labels(name) for name in STAGES}
        self.thumbnail_bytes_written = self.thumbnail_bytes.labels("written")


_create_lock = threading.Lock()


def for_svc(svc: Services) -> Metrics:
    m = svc.extras.get("metrics")
    if m is None:
        with _create_lock:
            m = svc.extras.get("metrics")
            if m is None:
                m = svc.extras["metrics"] = Metrics(svc)
    assert isinstance(m, Metrics)
    return m


def observe_stage(svc: Services, name: str, seconds: float) -> None:
    m = for_svc(svc)
    child = m.stages.get(name)
    (child or m.stage_seconds.labels(name)).observe(seconds)


@contextlib.contextmanager
def stage(svc: Services, name: str) -> Iterator[None]:
    """Time a pipeline stage, whether it succeeds or raises."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        observe_stage(svc, name, time.perf_counter() - t0)


def count_thumbnail_bytes(svc: Services, n: int, direction: str = "written") -> None:
    m = for_svc(svc)
    (m.thumbnail_bytes_written if direction == "written" else m.thumbnail_bytes.labels(direction)).inc(n)


def count_callback(svc: Services, status: int, answer: str) -> None:
    for_svc(svc).callbacks.labels(str(status), answer).inc()


def _record_request(resp: Response) -> Response:
    svc: Services = current_app.extensions["receiver"]
    if request.path.startswith("/callbacks/") and request.method == "POST":
        # Callbacks are counted where they are answered (callbacks.answer); this is the rest (404s).
        if not g.get("callback_counted"):
            body = resp.get_json(silent=True) if resp.is_json else None
            err = body.get("error") if isinstance(body, dict) else None
            count_callback(svc, resp.status_code, str(err.get("code")) if isinstance(err, dict) else "unknown")
    elif request.url_rule is not None:
        # The rule, not the path: job and snapshot ids would make the label set unbounded.
        for_svc(svc).requests.labels(request.url_rule.rule, str(resp.status_code)).inc()
    return resp


def metrics_view() -> Response:
    svc: Services = current_app.extensions["receiver"]
    return Response(generate_latest(for_svc(svc).registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


def init_app(app: Flask) -> None:
    for_svc(app.extensions["receiver"])
    app.after_request(_record_request)
    app.add_url_rule("/metrics", "metrics", metrics_view, methods=["GET"])
