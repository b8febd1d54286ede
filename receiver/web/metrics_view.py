"""GET /metrics, per-request counters, and the inbox gauges read from the database at scrape time."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from flask import Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from receiver.db.models import Event, utcnow
from receiver.db.queries import due_events, events_by_status
from receiver.services import Services, current_services, services

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric


class _InboxCollector(Collector):
    def __init__(self, svc: Services) -> None:
        self.svc = svc

    def collect(self) -> Iterable[Metric]:
        now = utcnow()
        with self.svc.readers() as s:
            counts = events_by_status(s)
            due = s.execute(select(func.count()).select_from(Event).where(due_events(now, now))).scalar_one()
        fam = GaugeMetricFamily("receiver_events", "Events in the inbox by status", labels=["status"])
        for status, n in counts.items():
            fam.add_metric([status], n)
        yield fam
        yield GaugeMetricFamily("receiver_queue_depth", "Events due to run now that no worker holds", value=due)


def _record_request(resp: Response) -> Response:
    svc = current_services()
    if request.path.startswith("/callbacks/") and request.method == "POST":
        # Callbacks are counted where they are answered (intake.view.answer); this is the rest (404s).
        if not g.get("callback_counted"):
            body = resp.get_json(silent=True) if resp.is_json else None
            err = body.get("error") if isinstance(body, dict) else None
            svc.metrics.count_callback(resp.status_code, str(err.get("code")) if isinstance(err, dict) else "unknown")
    elif request.url_rule is not None:
        # The rule, not the path: job and snapshot ids would make the label set unbounded.
        svc.metrics.requests.labels(request.url_rule.rule, str(resp.status_code)).inc()
    return resp


def metrics_view() -> Response:
    return Response(generate_latest(current_services().metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


def init_app(app: Flask) -> None:
    svc = services(app)
    svc.metrics.registry.register(_InboxCollector(svc))
    app.after_request(_record_request)
    app.add_url_rule("/metrics", "metrics", metrics_view, methods=["GET"])
