"""Prometheus metrics: one CollectorRegistry per Services (so many apps in one process never collide).

The pipeline reports through its Services' ``Metrics`` (``svc.metrics.stage(...)``); vendor adapters, which
have no Services, report calls through ``count_call`` into process-wide counters that every registry
exposes. Event counts by status and the queue depth are read from the database at scrape time
(receiver.web.metrics_view), since the inbox table is the truth, whichever process did the work.

With Celery workers in other processes, their stage histograms live there; the web's /metrics still shows
events by status and queue depth, which is what alerting needs.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

STAGES = ("verify", "resolve", "fetch", "thumbnail", "store", "index", "process")
_STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

_calls_lock = threading.Lock()
# (service, operation, outcome, account) -> count, process-wide
_calls: dict[tuple[str, str, str, str], int] = {}
# The account whose credentials the adapters are using on this thread (set by the per-account gateways), so
# oss2 calls deep in a store are counted under it without passing it through every helper.
current_account: contextvars.ContextVar[str] = contextvars.ContextVar("receiver_account", default="default")


@contextlib.contextmanager
def account_scope(alias: str) -> Iterator[None]:
    token = current_account.set(alias)
    try:
        yield
    finally:
        current_account.reset(token)


def count_call(service: str, operation: str, error: str | None = None, account: str | None = None) -> None:
    """One call to ICE or OSS; ``error`` is the receiver's error code when it failed."""
    key = (service, operation, error or "ok", account or current_account.get())
    with _calls_lock:
        _calls[key] = _calls.get(key, 0) + 1


def calls_by_account(service: str) -> dict[str, int]:
    """Calls to ``service`` made by this process, per account (for /v1/accounts)."""
    out: dict[str, int] = {}
    with _calls_lock:
        for (svc, op, _outcome, account), n in _calls.items():
            if svc == service and not op.endswith(".integrity"):
                out[account] = out.get(account, 0) + n
    return out


class _CallsCollector(Collector):
    def collect(self) -> Iterable[Metric]:
        fam = CounterMetricFamily("receiver_external_calls", "Calls to ICE and OSS by operation and outcome",
                                  labels=["service", "operation", "outcome", "account"])
        with _calls_lock:
            items = sorted(_calls.items())
        for (service, op, outcome, account), n in items:
            fam.add_metric([service, op, outcome, account], n)
        yield fam


class Metrics:
    def __init__(self) -> None:
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
        # Children looked up once: labels() costs a lock and a tuple build per call, ~10 calls per frame.
        self.stages = {name: self.stage_seconds.labels(name) for name in STAGES}
        self.thumbnail_bytes_written = self.thumbnail_bytes.labels("written")

    def observe_stage(self, name: str, seconds: float) -> None:
        child = self.stages.get(name)
        (child or self.stage_seconds.labels(name)).observe(seconds)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a pipeline stage, whether it succeeds or raises."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.observe_stage(name, time.perf_counter() - t0)

    def count_thumbnail_bytes(self, n: int, direction: str = "written") -> None:
        (self.thumbnail_bytes_written if direction == "written" else self.thumbnail_bytes.labels(direction)).inc(n)

    def count_callback(self, status: int, answer: str) -> None:
        self.callbacks.labels(str(status), answer).inc()
