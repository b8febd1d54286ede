"""The ICE gateway over the real SDK, against FakeIce over loopback HTTP (signatures verified)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from alibabacloud_ice20201109 import models as ice_models
from alibabacloud_tea_openapi.exceptions import ClientException

from receiver.adapters.base import JobInfo, format_ice_time, parse_ice_time
from receiver.adapters.ice import SdkIceGateway, build_client, iter_files
from receiver.adapters.ice_cache import CachedIceGateway
from receiver.config import Settings
from receiver.exceptions import IceError, JobNotFound, Transient
from receiver.sim.fake_ice import DEFAULT_ACCESS_KEY_ID, DEFAULT_ACCESS_KEY_SECRET, FakeIce, IceApiError, verify_acs3

T0 = parse_ice_time("2024-05-01T00:00:00Z")
ODD_ID = "job 1/x+y"  # space, slash and plus: the canonical query must use %20 / %2F / %2B


@pytest.fixture
def fake() -> Iterator[FakeIce]:
    with FakeIce() as f:
        yield f


def make_gateway(fake: FakeIce, secret: str = DEFAULT_ACCESS_KEY_SECRET, **kw: int) -> SdkIceGateway:
    return SdkIceGateway(build_client(fake.url, DEFAULT_ACCESS_KEY_ID, secret, **kw))  # type: ignore[arg-type]


@pytest.fixture
def gateway(fake: FakeIce) -> SdkIceGateway:
    return make_gateway(fake)


# -- signature ---------------------------------------------------------------------------------------------

VECTOR_HEADERS = {
    "host": "127.0.0.1:33769",
    "x-acs-version": "2020-11-09",
    "x-acs-action": "GetLiveSnapshotJob",
    "user-agent": "AlibabaCloud (Linux; x86_64) Python/3.11.7 Core/0.4.3 TeaDSL/2",
    "x-acs-date": "2026-11-28T19:30:04Z",
    "x-acs-signature-nonce": "0c13b5f63e5cf6e88479089929a1dad5",
    "accept": "application/json",
    "x-acs-content-sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "x-acs-credentials-provider": "static_ak",
    "authorization": "ACS3-HMAC-SHA256 Credential=testAccessKeyId,SignedHeaders=accept;host;user-agent;"
    "x-acs-action;x-acs-content-sha256;x-acs-credentials-provider;x-acs-date;x-acs-signature-nonce;"
    "x-acs-version,Signature=6d98e529cc964b6722a4797849930fbb6bca492e6f7bd3f4f5ae3c6f41b5903d",
}
VECTOR_QUERY = "JobId=%2A%2A%2A%2Aa046-263c-3560-978a-fb287782%2A%2A%2A%2A"
SECRETS = {"testAccessKeyId": "testAccessKeySecret"}


def test_signature_test_vector_verifies() -> None:
    assert verify_acs3("GET", "/", VECTOR_QUERY, VECTOR_HEADERS, b"", SECRETS) == "testAccessKeyId"


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"x-acs-action": "ListLiveSnapshotFiles"}, "SignatureDoesNotMatch"),
        ({"x-acs-content-sha256": "0" * 64}, "SignatureDoesNotMatch"),
        (
            {"authorization": VECTOR_HEADERS["authorization"].replace("testAccessKeyId", "otherKey")},
            "InvalidAccessKeyId.NotFound",
        ),
        ({"authorization": "Bearer x"}, "IncompleteSignature"),
    ],
)
def test_signature_tampering_is_rejected(change: dict[str, str], code: str) -> None:
    with pytest.raises(IceApiError) as err:
        verify_acs3("GET", "/", VECTOR_QUERY, {**VECTOR_HEADERS, **change}, b"", SECRETS)
    assert err.value.code == code


def test_signature_rejects_other_query_and_body() -> None:
    with pytest.raises(IceApiError, match="SignatureDoesNotMatch"):
        verify_acs3("GET", "/", VECTOR_QUERY + "x", VECTOR_HEADERS, b"", SECRETS)
    with pytest.raises(IceApiError, match="x-acs-content-sha256"):
        verify_acs3("GET", "/", VECTOR_QUERY, VECTOR_HEADERS, b"A=1", SECRETS)


def test_wrong_secret_is_a_permanent_ice_error(fake: FakeIce) -> None:
    fake.add_job("j1")
    with pytest.raises(IceError) as err:
        make_gateway(fake, secret="wrong").get_job("j1")
    assert err.value.ice_code == "SignatureDoesNotMatch"
    assert isinstance(err.value.__cause__, ClientException)
    assert fake.requests[-1]["status"] == 400
    assert fake.requests[-1]["code"] == "SignatureDoesNotMatch"


def test_unknown_access_key_is_not_mistaken_for_a_missing_job(fake: FakeIce) -> None:
    gw = SdkIceGateway(build_client(fake.url, "nobody", "secret"))
    with pytest.raises(IceError) as err:
        gw.get_job("j1")
    assert (err.value.ice_code, err.value.status) == ("InvalidAccessKeyId.NotFound", 404)


def test_missing_credentials_give_a_clear_error(fake: FakeIce) -> None:
    settings = Settings(ice_endpoint=fake.url, access_key_id=None, access_key_secret=None)
    with pytest.raises(IceError, match="ALIBABA_CLOUD_ACCESS_KEY_ID"):
        SdkIceGateway.from_settings(settings).get_job("j1")
    assert fake.requests == []


def test_odd_job_id_round_trips_through_signing(fake: FakeIce, gateway: SdkIceGateway) -> None:
    fake.add_job(ODD_ID)
    assert gateway.get_job(ODD_ID).job_id == ODD_ID
    assert fake.requests[-1]["params"] == {"JobId": ODD_ID}


def test_post_form_body_is_signed_and_accepted(fake: FakeIce) -> None:
    client = build_client(fake.url, DEFAULT_ACCESS_KEY_ID, DEFAULT_ACCESS_KEY_SECRET)
    req = ice_models.SubmitLiveSnapshotJobRequest(
        job_name="cam 1",
        template_id="t",
        stream_input=ice_models.SubmitLiveSnapshotJobRequestStreamInput(type="rtmp", url="rtmp://h/app/s"),
        snapshot_output=ice_models.SubmitLiveSnapshotJobRequestSnapshotOutput(
            storage_type="oss", endpoint="oss-cn-shanghai.aliyuncs.com", bucket="b"
        ),
    )
    job_id = client.submit_live_snapshot_job(req).body.job_id
    client.send_live_snapshot_job_command(
        ice_models.SendLiveSnapshotJobCommandRequest(command="stop", job_id=job_id)
    )
    job = SdkIceGateway(client).get_job(job_id)
    assert (job.name, job.bucket, job.status) == ("cam 1", "b", "paused")


def test_settings_endpoint_url_selects_http(fake: FakeIce) -> None:
    fake.add_job("j1")
    settings = Settings(
        ice_endpoint=fake.url + "/",
        access_key_id=DEFAULT_ACCESS_KEY_ID,
        access_key_secret=DEFAULT_ACCESS_KEY_SECRET,
    )
    assert SdkIceGateway.from_settings(settings).get_job("j1").job_id == "j1"


def test_endpoint_with_a_path_is_rejected() -> None:
    with pytest.raises(IceError, match="endpoint"):
        build_client("http://h:1/api", "a", "b")


# -- GetLiveSnapshotJob --------------------------------------------------------------------------------------


def test_get_job_maps_fields(fake: FakeIce, gateway: SdkIceGateway) -> None:
    fake.add_job(
        "j1",
        name="cam",
        bucket="bkt",
        endpoint="oss-cn-beijing.aliyuncs.com",
        interval=10,
        status="paused",
        overwrite_format="o/{JobId}.jpg",
        sequence_format="s/{JobId}/{Sequence}.jpg",
        callback_url="https://r.example/cb?x=1",
        stream_url="rtmp://h/app/s",
    )
    job = gateway.get_job("j1")
    assert (job.job_id, job.name, job.status, job.stream_url) == ("j1", "cam", "paused", "rtmp://h/app/s")
    assert (job.endpoint, job.bucket, job.interval_seconds) == ("oss-cn-beijing.aliyuncs.com", "bkt", 10)
    assert (job.overwrite_format, job.sequence_format) == ("o/{JobId}.jpg", "s/{JobId}/{Sequence}.jpg")
    assert job.callback_url == "https://r.example/cb?x=1"
    assert job.create_time is not None and parse_ice_time(job.create_time) > 0
    assert "RequestId" not in job.raw and job.raw["SnapshotOutput"]["Bucket"] == "bkt"
    assert JobInfo.from_json(job.to_json()) == job


def test_empty_formats_and_callback_become_none(fake: FakeIce, gateway: SdkIceGateway) -> None:
    fake.add_job("j1", overwrite_format="", callback_url="")
    job = gateway.get_job("j1")
    assert job.overwrite_format is None and job.callback_url is None


def test_unknown_job_raises_job_not_found(gateway: SdkIceGateway) -> None:
    with pytest.raises(JobNotFound) as err:
        gateway.get_job("nope")
    assert isinstance(err.value.__cause__, ClientException)


# -- transient failures -----------------------------------------------------------------------------------


def test_throttling_with_retry_after(fake: FakeIce, gateway: SdkIceGateway) -> None:
    fake.add_job("j1")
    fake.fail_next("GetLiveSnapshotJob", 1, "throttle")
    with pytest.raises(Transient) as err:
        gateway.get_job("j1")
    assert err.value.retry_after == pytest.approx(0.1)
    assert gateway.get_job("j1").job_id == "j1"  # the injected failure is used up


@pytest.mark.parametrize("kind", ["throttle_plain", "429", "500", "502_html"])
def test_other_transient_failures(fake: FakeIce, gateway: SdkIceGateway, kind: str) -> None:
    fake.add_job("j1")
    fake.fail_next("*", 1, kind)
    with pytest.raises(Transient) as err:
        gateway.get_job("j1")
    assert err.value.retry_after is None
    assert err.value.__cause__ is not None


def test_connection_refused_is_transient() -> None:
    with FakeIce() as stopped:
        gw = make_gateway(stopped)
    with pytest.raises(Transient, match="unreachable"):
        gw.get_job("j1")


def test_read_timeout_is_transient(fake: FakeIce) -> None:
    fake.add_job("j1")
    fake.latency = 0.5
    with pytest.raises(Transient):
        make_gateway(fake, timeout_ms=100).get_job("j1")


# -- ListLiveSnapshotFiles -----------------------------------------------------------------------------------


def add_files(fake: FakeIce, job_id: str, count: int, start_ms: int, step_ms: int) -> list[str]:
    keys = [f"snapshot/{job_id}/{start_ms + i * step_ms}.jpg" for i in range(count)]
    for i, key in enumerate(keys):
        fake.add_file(job_id, key, start_ms + i * step_ms)
    return keys


def test_list_files_pages_with_next_start_time(fake: FakeIce, gateway: SdkIceGateway) -> None:
    fake.add_job("j1")
    keys = add_files(fake, "j1", 250, T0 + 250, 500)  # two files a second: page edges split a second
    start, end = format_ice_time(T0), format_ice_time(T0 + 3_600_000)
    first = gateway.list_files("j1", start, end)
    assert len(first.files) == 100 and first.files[0].oss_object == keys[0]
    # NextStartTime = the (second-precision) CreateTime of the first file not returned.
    assert first.next_start_time == format_ice_time(T0 + 250 + 100 * 500)
    seen: dict[tuple[int | None, str], None] = {}
    page, pages = first, 1
    while True:
        seen.update(((f.create_timestamp_ms, f.oss_object), None) for f in page.files)
        if page.next_start_time is None:
            break
        page, pages = gateway.list_files("j1", page.next_start_time, end), pages + 1
    assert [k for _, k in seen] == keys
    assert pages == 3
    f = first.files[0]
    assert (f.bucket, f.endpoint, f.is_overlay, f.create_timestamp_ms) == (
        "testbucket",
        "oss-cn-shanghai.aliyuncs.com",
        False,
        T0 + 250,
    )


def test_iter_files_dedupes_and_splits_days(fake: FakeIce, gateway: SdkIceGateway) -> None:
    fake.add_job(ODD_ID)
    keys = add_files(fake, ODD_ID, 300, T0 + 10, 750_000)  # 300 files, one per 12.5 min: ~2.6 days
    got = list(iter_files(gateway, ODD_ID, T0, T0 + 3 * 86_400_000))
    assert [f.oss_object for f in got] == keys
    for r in fake.requests:
        p = r["params"]
        assert r["status"] == 200
        assert parse_ice_time(p["EndTime"]) - parse_ice_time(p["StartTime"]) <= 86_400_000


def test_iter_files_respects_millisecond_bounds(fake: FakeIce, gateway: SdkIceGateway) -> None:
    fake.add_job("j1")
    keys = add_files(fake, "j1", 10, T0, 100)
    assert [f.oss_object for f in iter_files(gateway, "j1", T0 + 250, T0 + 650)] == keys[3:7]


def test_desc_returns_newest_without_paging(fake: FakeIce, gateway: SdkIceGateway) -> None:
    fake.add_job("j1")
    keys = add_files(fake, "j1", 20, T0, 1000)
    page = gateway.list_files(
        "j1", format_ice_time(T0), format_ice_time(T0 + 60_000), limit=5, sort_by="desc"
    )
    assert [f.oss_object for f in page.files] == keys[::-1][:5]
    assert page.next_start_time is None


@pytest.mark.parametrize(
    ("start", "end", "limit", "code"),
    [
        ("2024-05-01T00:00:00Z", "2024-05-02T00:00:01Z", 100, "EndTimeMismatch"),
        ("2024-05-02T00:00:00Z", "2024-05-01T00:00:00Z", 100, "EndTimeMismatch"),
        ("2024-05-01 00:00:00", "2024-05-01T01:00:00Z", 100, "MalformedStartTime"),
        ("2024-05-01T00:00:00Z", "2024-05-01T01:00:00Z", 101, "InvalidParameter"),
    ],
)
def test_list_files_rejects_bad_windows(
    fake: FakeIce, gateway: SdkIceGateway, start: str, end: str, limit: int, code: str
) -> None:
    fake.add_job("j1")
    with pytest.raises(IceError) as err:
        gateway.list_files("j1", start, end, limit=limit)
    assert (err.value.ice_code, err.value.status) == (code, 400)


def test_exactly_one_day_is_allowed(fake: FakeIce, gateway: SdkIceGateway) -> None:
    fake.add_job("j1")
    assert gateway.list_files("j1", "2024-05-01T00:00:00Z", "2024-05-02T00:00:00Z").files == []


# -- ListLiveSnapshotJobs ------------------------------------------------------------------------------------


def test_list_jobs_pages_and_filters(fake: FakeIce, gateway: SdkIceGateway) -> None:
    for i in range(7):
        fake.add_job(f"j{i}", status="paused" if i % 2 else "started")
    jobs, total = gateway.list_jobs(page_no=2, page_size=3)
    assert total == 7 and len(jobs) == 3
    paused, total = gateway.list_jobs(status="paused")
    assert total == 3 and {j.job_id for j in paused} == {"j1", "j3", "j5"}
    assert paused[0].bucket == "testbucket" and paused[0].interval_seconds == 5


# -- CachedIceGateway ----------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_single_flight_under_concurrency(fake: FakeIce, gateway: SdkIceGateway) -> None:
    fake.add_job("j1")
    fake.latency = 0.2  # keep the first call open while the others arrive
    cached = CachedIceGateway(gateway, ttl=60)
    barrier = threading.Barrier(100)
    results: list[object] = []

    def worker() -> None:
        barrier.wait()
        results.append(cached.get_job("j1"))

    threads = [threading.Thread(target=worker) for _ in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 100 and all(isinstance(r, JobInfo) and r.job_id == "j1" for r in results)
    assert fake.calls("GetLiveSnapshotJob") == 1


def test_single_flight_shares_errors(fake: FakeIce, gateway: SdkIceGateway) -> None:
    fake.latency = 0.2
    cached = CachedIceGateway(gateway)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            cached.get_job("missing")
        except JobNotFound as e:
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 20 and fake.calls("GetLiveSnapshotJob") == 1


def test_ttl_expiry(fake: FakeIce, gateway: SdkIceGateway) -> None:
    fake.add_job("j1")
    clock = FakeClock()
    cached = CachedIceGateway(gateway, ttl=60, clock=clock)
    cached.get_job("j1")
    clock.now += 59
    cached.get_job("j1")
    assert fake.calls("GetLiveSnapshotJob") == 1
    clock.now += 2
    cached.get_job("j1")
    assert fake.calls("GetLiveSnapshotJob") == 2
    cached.invalidate("j1")
    cached.get_job("j1")
    assert fake.calls("GetLiveSnapshotJob") == 3


def test_negative_cache(fake: FakeIce, gateway: SdkIceGateway) -> None:
    clock = FakeClock()
    cached = CachedIceGateway(gateway, ttl=60, negative_ttl=30, clock=clock)
    for _ in range(3):
        with pytest.raises(JobNotFound):
            cached.get_job("j1")
    assert fake.calls("GetLiveSnapshotJob") == 1
    fake.add_job("j1")
    clock.now += 31
    assert cached.get_job("j1").job_id == "j1"
    assert fake.calls("GetLiveSnapshotJob") == 2


def test_transient_errors_are_not_cached(fake: FakeIce, gateway: SdkIceGateway) -> None:
    fake.add_job("j1")
    fake.fail_next("GetLiveSnapshotJob", 1, "500")
    cached = CachedIceGateway(gateway)
    with pytest.raises(Transient):
        cached.get_job("j1")
    assert cached.get_job("j1").job_id == "j1"
    assert fake.calls("GetLiveSnapshotJob") == 2


def test_cache_passes_listing_through(fake: FakeIce, gateway: SdkIceGateway) -> None:
    fake.add_job("j1")
    add_files(fake, "j1", 3, T0, 1000)
    cached = CachedIceGateway(gateway)
    assert len(cached.list_files("j1", format_ice_time(T0), format_ice_time(T0 + 10_000)).files) == 3
    assert cached.list_jobs()[1] == 1


def test_time_helpers() -> None:
    assert format_ice_time(1_660_638_613_798) == "2022-08-16T08:30:13Z"
    assert parse_ice_time("2022-08-16T08:30:13Z") == 1_660_638_613_000
    with pytest.raises(ValueError):
        parse_ice_time("2022-08-16 08:30:13")
