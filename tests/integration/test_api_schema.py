"""schemathesis against the live app: every operation of /openapi.json, generated requests, all checks.

Bounded (a few dozen examples per operation) so the whole run stays well under a minute.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode, checks

from receiver.services import services
from tests.support.api import add_event, add_job, add_snapshot, conforms, spec
from tests.support.builders import JOB, build_app

T0 = 1796212805123
EXAMPLES = 25


@pytest.fixture(scope="module")
def live_app(tmp_path_factory, fake_ice_module, fake_oss_module) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    from receiver.config import Settings
    from tests.support.builders import AK, OSS_ENDPOINT, SK

    s = Settings(data_dir=tmp_path_factory.mktemp("schema"), ice_endpoint=fake_ice_module.url,
                 access_key_id=AK, access_key_secret=SK, oss_endpoint_map={OSS_ENDPOINT: fake_oss_module.url},
                 workers=1)
    app = build_app(s)
    svc = services(app)
    add_job(svc)
    for i in range(3):
        add_snapshot(svc, T0 + i * 5000, data=b"\xff\xd8thumb")
    add_event(svc, "e1", "failed")
    yield app
    svc.close()


@pytest.fixture(scope="module")
def fake_ice_module() -> Iterator[Any]:
    from receiver.sim.fake_ice import FakeIce
    from tests.support.builders import AK, BUCKET, OSS_ENDPOINT, SK

    with FakeIce(access_keys={AK: SK}) as ice:
        ice.add_job(JOB, bucket=BUCKET, endpoint=OSS_ENDPOINT)
        yield ice


@pytest.fixture(scope="module")
def fake_oss_module() -> Iterator[Any]:
    from receiver.sim.fake_oss import FakeOss
    from tests.support.builders import AK, BUCKET, SK

    with FakeOss(access_keys={AK: SK}) as oss:
        oss.create_bucket(BUCKET)
        yield oss


def _operations(app: Any) -> list[Any]:
    loaded = schemathesis.openapi.from_wsgi("/openapi.json", app)
    # GET /v1/stream answers an endless body (Server-Sent Events), which a fuzzer reading whole responses
    # cannot take: tests/integration/test_stream.py covers it, bad parameters included.
    return [op for op in (result.ok() for result in loaded.get_all_operations()) if op.path != "/v1/stream"]


SEMANTIC = {"cursor", "since", "until", "time", "poll"}


def _excluded(case: Any) -> list[Any]:
    """Checks that do not apply to this request, each for a documented reason."""
    if case.operation.path.startswith("/callbacks/"):
        # An untrusted hint parsed leniently: it accepts shapes no strict schema describes and refuses some
        # that look valid (no usable JobId).
        return [checks.positive_data_acceptance, checks.negative_data_rejection]
    out = []
    if id(case) in _PINNED_CASES:
        # _pin replaced the path parameters with valid ones: a negative case may have become a valid request.
        out.append(checks.negative_data_rejection)
    if case.operation.path.startswith("/v1/subscriptions") and case.method.upper() == "POST":
        # Whether a URL may be subscribed depends on what its host resolves to (no loopback, private or
        # metadata address; tests/integration/test_subscriptions_api.py), and replay's `since` must parse as a
        # time: a schema-valid body may get its 400. A body over 64 KiB gets 413 whatever it holds, a status
        # schemathesis does not count as a rejection.
        out += [checks.positive_data_acceptance, checks.negative_data_rejection]
    query = case.query or {}
    if SEMANTIC & set(query):
        # A cursor is opaque (only issued ones are valid), a time must parse as ISO-8601 or Unix ms in
        # years 1000-9999 and the viewer's poll must be 0.5-3600 s: constraints JSON Schema cannot state
        # (or not for a decimal in a string), so a schema-valid value may get its 400.
        out.append(checks.positive_data_acceptance)
    if any(v in ("", None, [], {}) for v in query.values()):
        out.append(checks.negative_data_rejection)  # an empty parameter means absent (docs/api.md)
    declared = {p.name for p in case.operation.query}
    if set(query) - declared:
        # Unknown query parameters are ignored, not refused (docs/api.md): a request whose only fault is one
        # is valid. (Which examples reach this depends on every operation of the document: it surfaced when
        # /v1/accounts was added.)
        out.append(checks.negative_data_rejection)
    return out


# Path parameters pinned to the seeded data: the job, snapshot 1, and the sprite sheet over its snapshots.
PINNED = {"job_id": JOB, "since": str(T0 - 1000), "until": str(T0 + 60_000), "sheet": "0"}


_PINNED_CASES: set[int] = set()  # Case has __slots__: pinned ones are remembered by id while they run


def _pin(case: Any) -> Any:
    # Random ids almost always 404; half the cases use the seeded job and snapshot to reach the 200 paths.
    if case.path_parameters:
        case.path_parameters = {k: PINNED.get(k, "1") for k in case.path_parameters}
        _PINNED_CASES.add(id(case))
    return case


def _fuzz(op: Any, mode: GenerationMode) -> None:
    strategy = op.as_strategy(generation_mode=mode)

    @given(case=st.one_of(strategy, strategy.map(_pin)))
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
              derandomize=True, database=None)
    def run(case: Any) -> None:
        case.call_and_validate(excluded_checks=_excluded(case))

    run()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_api_conforms_to_its_openapi_document(live_app, mode):  # type: ignore[no-untyped-def]
    # Driven through hypothesis directly: schemathesis's pytest plugin does not load under pytest 9.
    failures: list[str] = []
    for op in _operations(live_app):
        try:
            _fuzz(op, mode)
        except Unsatisfiable:
            assert mode == GenerationMode.NEGATIVE, op.label  # nothing in this operation can be made invalid
        except Exception as e:  # noqa: BLE001 - collect every operation's failure, then report them all
            failures.append(f"{op.label}: {e}")
    assert not failures, "\n\n".join(failures)


def test_document_is_openapi_31_and_covers_the_interface(client):
    doc = spec(client)
    assert doc["openapi"] == "3.1.0"
    for path in ("/callbacks/live-snapshot", "/callbacks/live-snapshot/{token}", "/v1/jobs", "/v1/jobs/{job_id}",
                 "/v1/jobs/{job_id}/snapshots", "/v1/jobs/{job_id}/snapshots/latest",
                 "/v1/jobs/{job_id}/snapshots/nearest", "/v1/snapshots/{snapshot_id}",
                 "/v1/snapshots/{snapshot_id}/thumbnail", "/v1/events", "/healthz", "/readyz", "/metrics",
                 "/openapi.json", "/", "/jobs/{job_id}", "/v1/jobs/{job_id}/storyboard.vtt",
                 "/v1/jobs/{job_id}/storyboard/{since}-{until}-{sheet}.jpg", "/v1/subscriptions",
                 "/v1/subscriptions/{sub_id}", "/v1/subscriptions/{sub_id}/deliveries",
                 "/v1/subscriptions/{sub_id}/replay"):
        assert path in doc["paths"], path
    widths = doc["paths"]["/v1/snapshots/{snapshot_id}/thumbnail"]["get"]["parameters"][1]["schema"]["enum"]
    assert widths == [160, 320]
    conforms(client, {"error": {"code": "X", "message": "y"}}, "Error")
