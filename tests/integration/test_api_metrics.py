"""/metrics: Prometheus text, one registry per app, fed by the callback, the pipeline and the adapters."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from receiver.services import services
from receiver.worker.dispatch import drain
from tests.support.builders import build_app, callback_body, put_snapshot

T0 = 1796212805123


def scrape(client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:  # type: ignore[no-untyped-def]
    resp = client.get("/metrics")
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/plain")
    out = {}
    for fam in text_string_to_metric_families(resp.get_data(as_text=True)):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_follow_a_callback_through_the_pipeline(client, svc, fake_ice, fake_oss, frame):
    before = scrape(client)
    key = put_snapshot(fake_oss, fake_ice, T0, frame)
    assert client.post("/callbacks/live-snapshot", data=callback_body(key, T0)).status_code == 200
    assert client.post("/callbacks/live-snapshot", data=callback_body(key, T0)).status_code == 200
    assert client.post("/callbacks/live-snapshot", data=b"not json").status_code == 400
    pending = scrape(client)
    assert pending[("receiver_events", (("status", "pending"),))] == 1
    assert pending[("receiver_queue_depth", ())] == 1
    drain(svc)
    [snap] = client.get("/v1/jobs/job-0001/snapshots").get_json()["items"]
    thumb = client.get(snap["thumbnails"][0]["url"])
    m = scrape(client)
    assert m[("receiver_callbacks_total", (("answer", "accepted"), ("status", "200")))] == 1
    assert m[("receiver_callbacks_total", (("answer", "duplicate"), ("status", "200")))] == 1
    assert m[("receiver_callbacks_total", (("answer", "InvalidJson"), ("status", "400")))] == 1
    assert m[("receiver_events", (("status", "done"),))] == 1
    assert m[("receiver_events", (("status", "pending"),))] == 0 and m[("receiver_queue_depth", ())] == 0
    for stage in ("verify", "resolve", "fetch", "thumbnail", "store", "index", "process"):
        assert m[("receiver_stage_seconds_count", (("stage", stage),))] == 1, stage
    assert m[("receiver_thumbnail_bytes_total", (("direction", "served"),))] == len(thumb.data)
    assert m[("receiver_thumbnail_bytes_total", (("direction", "written"),))] > len(thumb.data)

    def delta(service: str, op: str, outcome: str = "ok") -> float:
        k = ("receiver_external_calls_total",
             (("account", "default"), ("operation", op), ("outcome", outcome), ("service", service)))
        return m.get(k, 0) - before.get(k, 0)

    assert delta("ice", "GetLiveSnapshotJob") == 1
    assert delta("oss", "GetObject") == 1
    assert m[("receiver_http_requests_total", (("route", "/v1/jobs/<job_id>/snapshots"), ("status", "200")))] == 1


def test_vendor_errors_are_counted_by_code(client, svc, fake_ice):
    def failures() -> float:
        return sum(v for (name, labels), v in scrape(client).items()
                   if name == "receiver_external_calls_total" and ("outcome", "JobNotFound") in labels)

    before = failures()
    client.post("/callbacks/live-snapshot", data=callback_body("snapshot/ghost/1.jpg", T0, job="ghost"))
    drain(svc)
    assert failures() == before + 1


def test_each_app_has_its_own_registry(client, settings):
    client.post("/callbacks/live-snapshot", data=callback_body(None, T0))
    other = build_app(settings.with_(data_dir=settings.data_dir / "other"))
    try:
        m = scrape(other.test_client())
        assert ("receiver_callbacks_total", (("answer", "accepted"), ("status", "200"))) not in m
        assert scrape(client)[("receiver_callbacks_total", (("answer", "accepted"), ("status", "200")))] == 1
    finally:
        services(other).close()
