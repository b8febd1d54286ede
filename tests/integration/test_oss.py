"""The OSS adapters and receiver.sim.fake_oss, through the real oss2 client against the fake server."""

from __future__ import annotations

import http.server
import io
import os
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import oss2
import pytest
import trustme

from receiver.adapters.oss_policy import EndpointPolicy
from receiver.adapters.oss_source import OssSourceStore
from receiver.adapters.oss_transport import DirectSession, ProxiedSession
from receiver.adapters.thumbstore import FileThumbnailStore, OssThumbnailStore, thumbnail_store_from_url
from receiver.config import Settings
from receiver.exceptions import ObjectNotFound, Rejected, StoreError, TooLarge, Transient
from receiver.sim.fake_oss import (
    FakeOss,
    crc64,
    v1_signature,
    v1_string_to_sign,
    v4_canonical_request,
    v4_signature,
    v4_string_to_sign,
)
from tests.support.pg_redis import free_port

AK, SK = "AKIDEXAMPLE", "SECRETEXAMPLE"
ENDPOINT = "oss-cn-shanghai.aliyuncs.com"  # what ICE would send; mapped to the fake
BUCKET = "snapshots"


@pytest.fixture
def fake() -> Iterator[FakeOss]:
    with FakeOss({AK: SK}) as f:
        f.create_bucket(BUCKET)
        yield f


@pytest.fixture
def settings(fake: FakeOss, tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path,
        access_key_id=AK,
        access_key_secret=SK,
        oss_endpoint_map={ENDPOINT: fake.url},
        workers=2,
        oss_timeout_seconds=5.0,
    )


@pytest.fixture
def source(settings: Settings) -> Iterator[OssSourceStore]:
    store = OssSourceStore(settings)
    yield store
    store.close()


@pytest.fixture(params=["direct", "requests"])
def session(request: pytest.FixtureRequest) -> Iterator[oss2.Session]:
    # The raw-bucket tests run over both transports the stores use: receiver's direct urllib3 session and
    # oss2's own requests session (kept for proxied environments). One pool each, closed at teardown so no
    # socket is left to the GC.
    s = DirectSession(10) if request.param == "direct" else ProxiedSession(10)
    yield s
    s.close()


@pytest.fixture
def v1_bucket(fake: FakeOss, session: oss2.Session) -> oss2.Bucket:
    return oss2.Bucket(oss2.Auth(AK, SK), fake.url, BUCKET, session=session)


def v4_bucket(fake: FakeOss, session: oss2.Session, region: str = "cn-shanghai") -> oss2.Bucket:
    return oss2.Bucket(oss2.AuthV4(AK, SK), fake.url, BUCKET, region=region, session=session)


# --- signature helpers against the fixed vectors of oss.md section 7.5 -----------------------------------

DATE = "Wed, 01 May 2024 12:00:00 GMT"


def test_v1_vectors() -> None:
    get = v1_string_to_sign("GET", {"Date": DATE, "Range": "bytes=0-99"}, BUCKET, "cam1/a.jpg")
    assert v1_signature(SK, get) == "ztyLo3zCZrhTddCob+Tun0Ud/kc="

    put_headers = {
        "Date": DATE,
        "Content-Type": "image/jpeg",
        "Content-MD5": "eB5eJF1ptWaXm4bijSPyxw==",
        "x-oss-meta-camera": "cam1",
        "X-OSS-Meta-A": "b",
    }
    put = v1_string_to_sign("PUT", put_headers, BUCKET, "thumbs/a.jpg")
    assert put == (
        "PUT\neB5eJF1ptWaXm4bijSPyxw==\nimage/jpeg\nWed, 01 May 2024 12:00:00 GMT\n"
        "x-oss-meta-a:b\nx-oss-meta-camera:cam1\n/snapshots/thumbs/a.jpg"
    )
    assert v1_signature(SK, put) == "WB2oXNrJrNCiLVuOr2bY1GkigVc="

    list_query = [("list-type", "2"), ("prefix", ""), ("continuation-token", ""), ("max-keys", "100")]
    listing = v1_string_to_sign("GET", {"Date": DATE}, BUCKET, None, list_query)
    assert listing.endswith("\n/snapshots/?continuation-token")
    assert v1_signature(SK, listing) == "Msrtob7WDBEKY823CS8/NC+e7uY="

    url = v1_string_to_sign("GET", {}, BUCKET, "cam1/a.jpg", [("OSSAccessKeyId", AK)], date="1714568400")
    assert v1_signature(SK, url) == "hGpzZGpB4Lmq31CUdZkmZyDH24g="


def test_v4_vectors() -> None:
    dt = "20240501T120000Z"
    headers = {"x-oss-date": dt, "x-oss-content-sha256": "UNSIGNED-PAYLOAD"}
    canonical = v4_canonical_request("GET", BUCKET, "cam1/a b.jpg", [], headers)
    assert canonical.startswith("GET\n/snapshots/cam1/a%20b.jpg\n\n")
    sts = v4_string_to_sign(dt, "cn-hangzhou", canonical)
    assert v4_signature(SK, dt, "cn-hangzhou", sts) == (
        "1b18005b192c54199d24e20a115c83d4326a7505c38a6d988c69fd2ef723840b"
    )

    query = [
        ("x-oss-date", dt),
        ("x-oss-expires", "3600"),
        ("x-oss-signature-version", "OSS4-HMAC-SHA256"),
        ("x-oss-credential", f"{AK}/20240501/cn-hangzhou/oss/aliyun_v4_request"),
    ]
    canonical = v4_canonical_request("GET", BUCKET, "cam1/a.jpg", query, {})
    sts = v4_string_to_sign(dt, "cn-hangzhou", canonical)
    assert v4_signature(SK, dt, "cn-hangzhou", sts) == (
        "f35e34819caf8adf2d34829e7655825d7221a0ef3fe15e128c700f10b12fdadb"
    )


def test_crc64_check_value() -> None:
    assert crc64(b"123456789") == 0x995DC9BBDF1939FA


# --- OssSourceStore ---------------------------------------------------------------------------------------


def test_get_ok(fake: FakeOss, source: OssSourceStore) -> None:
    etag = fake.put(BUCKET, "cam1/a.jpg", b"\xff\xd8jpeg", last_modified=1_714_564_800.0)
    got = source.get(ENDPOINT, BUCKET, "cam1/a.jpg", max_bytes=1000)
    assert got.data == b"\xff\xd8jpeg"
    assert got.etag == etag and etag.isupper() and len(etag) == 32
    assert got.size == 6
    assert got.last_modified_ms == 1_714_564_800_000
    assert got.content_type == "image/jpeg"
    assert [(r["method"], r["auth"], r["status"]) for r in fake.fetched(BUCKET, "cam1/a.jpg")] == [
        ("GET", "v1", 200)
    ]


@pytest.mark.parametrize(
    "key", ["cam 1/a b.jpg", "cam1/a+b.jpg", "相机/快照 é.jpg", "a/b/c/d.jpg", "x%2Fy.jpg"]
)
def test_get_awkward_keys(fake: FakeOss, source: OssSourceStore, key: str) -> None:
    fake.put(BUCKET, key, key.encode())
    assert source.get(ENDPOINT, BUCKET, key, max_bytes=1000).data == key.encode()
    assert fake.fetched(key=key)[0]["key"] == key


def test_wrong_secret_is_store_error(fake: FakeOss, settings: Settings) -> None:
    fake.put(BUCKET, "a.jpg", b"x")
    store = OssSourceStore(settings.with_(access_key_secret="wrong"))
    with pytest.raises(StoreError, match="SignatureDoesNotMatch") as info:
        store.get(ENDPOINT, BUCKET, "a.jpg", max_bytes=10)
    assert isinstance(info.value.__cause__, oss2.exceptions.SignatureDoesNotMatch)
    assert fake.requests[-1]["status"] == 403


def test_unknown_access_key_is_store_error(fake: FakeOss, settings: Settings) -> None:
    fake.put(BUCKET, "a.jpg", b"x")
    with pytest.raises(StoreError, match="InvalidAccessKeyId"):
        OssSourceStore(settings.with_(access_key_id="nobody")).head(ENDPOINT, BUCKET, "a.jpg")


def test_missing_key_and_bucket(fake: FakeOss, source: OssSourceStore) -> None:
    with pytest.raises(ObjectNotFound, match="NoSuchKey") as info:
        source.get(ENDPOINT, BUCKET, "nope.jpg", max_bytes=10)
    assert isinstance(info.value.__cause__, oss2.exceptions.NoSuchKey)
    with pytest.raises(ObjectNotFound, match="NoSuchBucket"):
        source.get(ENDPOINT, "other-bucket", "a.jpg", max_bytes=10)
    # HEAD has no body: the code must come through x-oss-err.
    with pytest.raises(ObjectNotFound, match="NoSuchKey"):
        source.head(ENDPOINT, BUCKET, "nope.jpg")


def test_server_error_is_transient(fake: FakeOss, source: OssSourceStore) -> None:
    fake.put(BUCKET, "a.jpg", b"x")
    fake.fail_next("GET", 1)
    with pytest.raises(Transient, match="InternalError"):
        source.get(ENDPOINT, BUCKET, "a.jpg", max_bytes=10)
    fake.fail_next("HEAD", 1, status=503, code="ServiceUnavailable")
    with pytest.raises(Transient):
        source.head(ENDPOINT, BUCKET, "a.jpg")
    # Injected failures are consumed; the next call goes through, and oss2 never retried by itself.
    assert source.get(ENDPOINT, BUCKET, "a.jpg", max_bytes=10).data == b"x"
    assert [r["status"] for r in fake.fetched()] == [500, 503, 200]


def test_crc_mismatch_is_transient(fake: FakeOss, source: OssSourceStore) -> None:
    fake.put(BUCKET, "a.jpg", b"x" * 5000)
    fake.corrupt_crc_next(1)
    with pytest.raises(Transient, match="crc mismatch"):
        source.get(ENDPOINT, BUCKET, "a.jpg", max_bytes=10_000)
    assert len(source.get(ENDPOINT, BUCKET, "a.jpg", max_bytes=10_000).data) == 5000


def test_truncated_transfer_is_transient(fake: FakeOss, source: OssSourceStore) -> None:
    fake.put(BUCKET, "a.jpg", b"x" * 50_000)
    fake.truncate_next(1)
    with pytest.raises(Transient):
        source.get(ENDPOINT, BUCKET, "a.jpg", max_bytes=100_000)
    assert len(source.get(ENDPOINT, BUCKET, "a.jpg", max_bytes=100_000).data) == 50_000


def test_too_large(fake: FakeOss, source: OssSourceStore) -> None:
    fake.put(BUCKET, "big.jpg", b"x" * 100_001)
    with pytest.raises(TooLarge, match="100001 bytes"):
        source.get(ENDPOINT, BUCKET, "big.jpg", max_bytes=100_000)
    assert len(fake.fetched(key="big.jpg")) == 1
    # Exactly at the cap is fine, and the early close did not poison the shared pool.
    fake.put(BUCKET, "cap.jpg", b"y" * 100_000)
    assert source.get(ENDPOINT, BUCKET, "cap.jpg", max_bytes=100_000).size == 100_000


def test_stopped_server_is_transient(fake: FakeOss, source: OssSourceStore) -> None:
    fake.put(BUCKET, "a.jpg", b"x")
    source.get(ENDPOINT, BUCKET, "a.jpg", max_bytes=10)  # leaves a pooled keep-alive connection behind
    fake.stop()
    with pytest.raises(Transient):
        source.get(ENDPOINT, BUCKET, "a.jpg", max_bytes=10)


def test_slow_server_is_transient(fake: FakeOss, settings: Settings) -> None:
    fake.put(BUCKET, "a.jpg", b"x")
    fake.latency = 0.5
    store = OssSourceStore(settings.with_(oss_timeout_seconds=0.1))
    with pytest.raises(Transient, match="timed out"):
        store.get(ENDPOINT, BUCKET, "a.jpg", max_bytes=10)


def test_head(fake: FakeOss, source: OssSourceStore) -> None:
    etag = fake.put(BUCKET, "cam1/a.jpg", b"abc", last_modified=1_700_000_000)
    meta = source.head(ENDPOINT, BUCKET, "cam1/a.jpg")
    assert (meta.etag, meta.size, meta.last_modified_ms) == (etag, 3, 1_700_000_000_000)
    assert fake.fetched()[0]["method"] == "HEAD"


def test_disallowed_endpoint_is_rejected_before_any_request(fake: FakeOss, source: OssSourceStore) -> None:
    with pytest.raises(Rejected):
        source.get("oss.evil.example.com", BUCKET, "a.jpg", max_bytes=10)
    with pytest.raises(Rejected):
        source.get(ENDPOINT, "Bad_Bucket", "a.jpg", max_bytes=10)
    assert fake.requests == []


def test_sts_credentials(fake: FakeOss, settings: Settings) -> None:
    fake.put(BUCKET, "a.jpg", b"x")
    store = OssSourceStore(settings.with_(security_token="token-123"))
    assert store.get(ENDPOINT, BUCKET, "a.jpg", max_bytes=10).data == b"x"


# --- fake server behaviour seen through oss2 ---------------------------------------------------------------


def test_presigned_url_v1(fake: FakeOss, v1_bucket: oss2.Bucket) -> None:
    fake.put(BUCKET, "cam1/a b+c.jpg", b"data")
    bucket = v1_bucket
    with urllib.request.urlopen(bucket.sign_url("GET", "cam1/a b+c.jpg", 60)) as resp:
        assert resp.read() == b"data"
    with urllib.request.urlopen(bucket.sign_url("GET", "cam1/a b+c.jpg", 60, slash_safe=True)) as resp:
        assert resp.read() == b"data"
    assert [r["auth"] for r in fake.requests] == ["v1-url", "v1-url"]

    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(bucket.sign_url("GET", "cam1/a b+c.jpg", -10))
    assert info.value.code == 403
    assert b"<Code>AccessDenied</Code>" in info.value.read()
    info.value.close()


def test_anonymous_refused_unless_public_read(fake: FakeOss) -> None:
    fake.put(BUCKET, "a.jpg", b"x")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{fake.url}/{BUCKET}/a.jpg")
    assert info.value.code == 403
    info.value.close()
    fake.create_bucket("public", public_read=True)
    fake.put("public", "a.jpg", b"pub")
    with urllib.request.urlopen(f"{fake.url}/public/a.jpg") as resp:
        assert resp.read() == b"pub"
    assert fake.requests[-1]["auth"] == "anon"


def test_v4_header_and_presign(fake: FakeOss, session: oss2.Session) -> None:
    bucket = v4_bucket(fake, session)
    bucket.put_object(
        "v4/x y+z.jpg", b"v4data", headers={"Content-Type": "image/jpeg", "x-oss-meta-cam": "1"}
    )
    assert bucket.get_object("v4/x y+z.jpg").read() == b"v4data"
    assert bucket.head_object("v4/x y+z.jpg").headers["x-oss-meta-cam"] == "1"
    assert [o.key for o in bucket.list_objects_v2(prefix="v4/", delimiter="/").object_list] == [
        "v4/x y+z.jpg"
    ]
    with urllib.request.urlopen(bucket.sign_url("GET", "v4/x y+z.jpg", 60)) as resp:
        assert resp.read() == b"v4data"
    assert {r["auth"] for r in fake.requests} == {"v4", "v4-url"}
    assert all(r["status"] < 300 for r in fake.requests)

    with pytest.raises(oss2.exceptions.AccessDenied):
        v4_bucket(fake, session, region="cn-hangzhou").get_object("v4/x y+z.jpg")


def test_v4_presigned_expired(fake: FakeOss) -> None:
    # The oss.md vector: signed in 2024 for one hour, so long expired (region must match the scope).
    hangzhou = FakeOss({AK: SK}, region="cn-hangzhou")
    with hangzhou:
        hangzhou.put(BUCKET, "cam1/a.jpg", b"x")
        url = (
            f"{hangzhou.url}/snapshots/cam1%2Fa.jpg?x-oss-date=20240501T120000Z&x-oss-expires=3600"
            "&x-oss-signature-version=OSS4-HMAC-SHA256"
            "&x-oss-credential=AKIDEXAMPLE%2F20240501%2Fcn-hangzhou%2Foss%2Faliyun_v4_request"
            "&x-oss-signature=f35e34819caf8adf2d34829e7655825d7221a0ef3fe15e128c700f10b12fdadb"
        )
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(url)
        assert info.value.code == 403
        assert b"expired" in info.value.read()
        info.value.close()


def test_ranges(fake: FakeOss, v1_bucket: oss2.Bucket) -> None:
    fake.put(BUCKET, "r.bin", bytes(range(100)))
    bucket = v1_bucket
    r = bucket.get_object("r.bin", byte_range=(10, 19))
    assert r.status == 206 and r.read() == bytes(range(10, 20)) and r.content_range == "bytes 10-19/100"
    assert bucket.get_object("r.bin", byte_range=(None, 5)).read() == bytes(range(95, 100))
    assert bucket.get_object("r.bin", byte_range=(98, None)).read() == b"\x62\x63"
    with pytest.raises(oss2.exceptions.ServerError) as info:
        bucket.get_object("r.bin", byte_range=(200, 300))
    assert (info.value.status, info.value.code) == (416, "InvalidRange")


def test_put_checks_content_md5(fake: FakeOss, v1_bucket: oss2.Bucket) -> None:
    bucket = v1_bucket
    with pytest.raises(oss2.exceptions.InvalidDigest):
        bucket.put_object("a.jpg", b"x", headers={"Content-MD5": "AAAAAAAAAAAAAAAAAAAAAA=="})
    result = bucket.put_object("a.jpg", b"x", headers={"Content-MD5": oss2.utils.content_md5(b"x")})
    assert result.crc == crc64(b"x")
    assert fake.get(BUCKET, "a.jpg") == b"x"


def test_object_meta_and_exists(fake: FakeOss, v1_bucket: oss2.Bucket, session: oss2.Session) -> None:
    etag = fake.put(BUCKET, "a.jpg", b"abc")
    bucket = v1_bucket
    meta = bucket.get_object_meta("a.jpg")
    assert (meta.etag, meta.content_length) == (etag, 3)
    assert bucket.object_exists("a.jpg") and not bucket.object_exists("b.jpg")
    with pytest.raises(oss2.exceptions.NoSuchBucket):
        oss2.Bucket(oss2.Auth(AK, SK), fake.url, "missing", session=session).object_exists("a.jpg")


def test_list_objects_v2_paging(fake: FakeOss, v1_bucket: oss2.Bucket) -> None:
    keys = ["cam1/a.jpg", "cam1/b c.jpg", "cam1/sub/d.jpg", "cam1/ü+.jpg", "cam2/e.jpg"]
    for k in keys:
        fake.put(BUCKET, k, b"x")
    bucket = v1_bucket
    seen, token, pages = [], "", 0
    while True:
        page = bucket.list_objects_v2(prefix="cam1/", continuation_token=token, max_keys=2)
        seen += [o.key for o in page.object_list]
        pages += 1
        if not page.is_truncated:
            break
        token = page.next_continuation_token
    assert seen == keys[:4] and pages == 2

    listed = list(oss2.ObjectIteratorV2(bucket, prefix="cam1/", delimiter="/", max_keys=1))
    assert [(o.key, o.is_prefix()) for o in listed] == [
        ("cam1/a.jpg", False),
        ("cam1/b c.jpg", False),
        ("cam1/sub/", True),
        ("cam1/ü+.jpg", False),
    ]
    first = bucket.list_objects_v2(prefix="cam1/a").object_list[0]
    assert (first.size, first.type, first.storage_class) == (1, "Normal", "Standard")


def test_batch_delete(fake: FakeOss, v1_bucket: oss2.Bucket) -> None:
    for k in ["a.jpg", "b c.jpg", "d+e.jpg"]:
        fake.put(BUCKET, k, b"x")
    result = v1_bucket.batch_delete_objects(["a.jpg", "b c.jpg", "d+e.jpg", "never.jpg"])
    assert sorted(result.deleted_keys) == ["a.jpg", "b c.jpg", "d+e.jpg", "never.jpg"]
    assert fake.keys(BUCKET) == []


# --- endpoint policy --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "host"),
    [
        ("https://oss-cn-shanghai.aliyuncs.com/", "oss-cn-shanghai.aliyuncs.com"),
        ("OSS-CN-Shanghai.aliyuncs.com", "oss-cn-shanghai.aliyuncs.com"),
        ("oss-cn-shanghai.aliyuncs.com.", "oss-cn-shanghai.aliyuncs.com"),
        ("http://oss-cn-shanghai.aliyuncs.com:8080/x?y", "oss-cn-shanghai.aliyuncs.com"),
        ("  oss-cn-shanghai.aliyuncs.com:443  ", "oss-cn-shanghai.aliyuncs.com"),
        ("127.0.0.1:9000", "127.0.0.1"),
    ],
)
def test_normalize(raw: str, host: str) -> None:
    assert EndpointPolicy.normalize(raw) == host


@pytest.mark.parametrize(
    "raw", ["", "https://", "a b.com", "evil.com\\@x.aliyuncs.com", "host:port", "a..b.com"]
)
def test_normalize_rejects_garbage(raw: str) -> None:
    with pytest.raises(Rejected, match="invalid OSS endpoint"):
        EndpointPolicy.normalize(raw)


@pytest.mark.parametrize(
    ("endpoint", "allowed"),
    [
        ("oss-cn-shanghai.aliyuncs.com", True),
        ("oss-cn-shanghai-internal.aliyuncs.com", True),
        ("https://cn-shanghai.oss.aliyuncs.com", True),
        ("aliyuncs.com.evil.com", False),
        ("evilaliyuncs.com", False),
        ("aliyuncs.com", False),
        (".aliyuncs.com", False),
        ("https://user@evil.com/oss.aliyuncs.com", False),
        ("oss.aliyuncs.com@evil.com", False),
        ("evil.com#.aliyuncs.com", False),
        ("127.0.0.1", False),
        ("mapped-emulator", True),
    ],
)
def test_endpoint_allow_list(endpoint: str, allowed: bool) -> None:
    policy = EndpointPolicy(("*.aliyuncs.com",), {"mapped-emulator": "http://127.0.0.1:9000"})
    assert policy.is_allowed(endpoint) is allowed


def test_endpoint_resolve() -> None:
    policy = EndpointPolicy(("*.aliyuncs.com",), {"oss-cn-shanghai.aliyuncs.com": "http://127.0.0.1:9000/"})
    assert policy.resolve("https://OSS-cn-shanghai.aliyuncs.com") == "http://127.0.0.1:9000"
    assert policy.resolve("http://oss-cn-beijing.aliyuncs.com:80") == "https://oss-cn-beijing.aliyuncs.com"
    with pytest.raises(Rejected):
        policy.resolve("aliyuncs.com.evil.com")
    policy = EndpointPolicy.from_settings(Settings(oss_allowed_endpoints=("oss-cn-*.aliyuncs.com",)))
    assert policy.is_allowed("oss-cn-hangzhou.aliyuncs.com")
    assert not policy.is_allowed("oss-us-west-1.aliyuncs.com")


# --- thumbnail stores -------------------------------------------------------------------------------------


def test_file_store(tmp_path: Path) -> None:
    store = FileThumbnailStore(tmp_path / "thumbs")
    store.put("job1/cam 1/320.jpg", b"one", "image/jpeg")
    store.put("job1/cam 1/320.jpg", b"two", "image/jpeg")
    assert store.get("job1/cam 1/320.jpg") == b"two"
    assert store.exists("job1/cam 1/320.jpg") and not store.exists("job1/other.jpg")
    assert store.presign("job1/cam 1/320.jpg", 60) is None
    assert os.listdir(tmp_path / "thumbs/job1/cam 1") == ["320.jpg"]  # no temp files left behind
    store.delete(["job1/cam 1/320.jpg", "job1/never.jpg"])
    store.delete(["job1/cam 1/320.jpg"])
    assert not store.exists("job1/cam 1/320.jpg")
    with pytest.raises(ObjectNotFound):
        store.get("job1/cam 1/320.jpg")


def test_file_store_delete_removes_emptied_folders(tmp_path: Path) -> None:
    # Pruning must not leave an empty folder behind per snapshot (the layout before shard folders had one).
    store = FileThumbnailStore(tmp_path / "thumbs")
    for key in ("ab/0123/320.jpg", "ab/0123/160.jpg", "ab/4567/320.jpg", "cd/ef/x-320.jpg"):
        store.put(key, b"x", "image/jpeg")
    store.delete(["ab/0123/320.jpg", "ab/0123/160.jpg"])
    assert sorted(os.listdir(tmp_path / "thumbs")) == ["ab", "cd"]
    assert os.listdir(tmp_path / "thumbs/ab") == ["4567"]  # the other snapshot's folder stays
    store.delete(["ab/4567/320.jpg", "cd/ef/x-320.jpg"])
    assert os.listdir(tmp_path / "thumbs") == []  # the store's own root stays
    # A folder a delete removed is made again by the next put into it.
    store.put("cd/ef/y-320.jpg", b"y", "image/jpeg")
    assert store.get("cd/ef/y-320.jpg") == b"y"


@pytest.mark.parametrize(
    "key", ["../x.jpg", "a/../../x.jpg", "/etc/passwd", "a//b.jpg", "", "a\\..\\b", "C:x"]
)
def test_file_store_rejects_unsafe_keys(tmp_path: Path, key: str) -> None:
    store = FileThumbnailStore(tmp_path)
    with pytest.raises(ValueError):
        store.put(key, b"x", "image/jpeg")
    with pytest.raises(ValueError):
        store.get(key)


def test_oss_store(fake: FakeOss, settings: Settings) -> None:
    fake.create_bucket("thumbs")
    store = thumbnail_store_from_url(f"oss://thumbs/t/?endpoint={ENDPOINT}&redirect=1", settings)
    assert isinstance(store, OssThumbnailStore) and store.redirect and store.prefix == "t/"
    store.put("job1/a b.webp", b"webp", "image/webp")
    assert fake.get("thumbs", "t/job1/a b.webp") == b"webp"
    assert store.get("job1/a b.webp") == b"webp"
    assert store.exists("job1/a b.webp") and not store.exists("job1/none.webp")
    url = store.presign("job1/a b.webp", 60)
    assert url is not None and "/t/job1/" in url
    with urllib.request.urlopen(url) as resp:
        assert resp.read() == b"webp"
        assert resp.headers["Content-Type"] == "image/webp"
    store.delete(["job1/a b.webp", "job1/none.webp"])
    store.delete([])
    assert not store.exists("job1/a b.webp")
    with pytest.raises(ObjectNotFound):
        store.get("job1/a b.webp")


def test_stores_delete_what_is_older_than_a_cutoff(fake: FakeOss, settings: Settings, tmp_path: Path) -> None:
    # What `receiver prune` does to cached storyboard sheets, in both stores: only under the prefix, only
    # what was last modified before the cutoff; a dry run counts and keeps.
    now = time.time()
    fake.create_bucket("thumbs")
    oss_store = thumbnail_store_from_url(f"oss://thumbs/t/?endpoint={ENDPOINT}", settings)
    file_store = FileThumbnailStore(tmp_path / "thumbs")
    ages = {"sheets/ab/old.jpg": 40, "sheets/cd/old.jpg": 31, "sheets/ab/new.jpg": 1, "ab/old-thumb.jpg": 40}
    for key, days in ages.items():
        fake.put("thumbs", f"t/{key}", b"x", last_modified=now - days * 86400)
        file_store.put(key, b"x", "image/jpeg")
        os.utime(file_store.path_for(key), (now - days * 86400,) * 2)
    cutoff = now - 30 * 86400
    for store in (oss_store, file_store):
        assert store.delete_older_than("sheets/", cutoff, dry_run=True) == 2
        assert all(store.exists(k) for k in ages)
        assert store.delete_older_than("sheets/", cutoff) == 2
        assert [k for k in ages if store.exists(k)] == ["sheets/ab/new.jpg", "ab/old-thumb.jpg"]
        assert store.delete_older_than("sheets/", cutoff) == 0
    assert fake.keys("thumbs") == ["t/ab/old-thumb.jpg", "t/sheets/ab/new.jpg"]
    assert not (tmp_path / "thumbs/sheets/cd").exists()  # emptied folders go too
    assert file_store.delete_older_than("nothing-here/", now) == 0
    # A file name the key syntax would read differently ("\\" is a separator in keys) is removed as it is.
    odd = tmp_path / "thumbs/sheets/a\\b.jpg"
    odd.write_bytes(b"x")
    os.utime(odd, (now - 40 * 86400,) * 2)
    file_store.put("sheets/a/b.jpg", b"keep", "image/jpeg")
    assert file_store.delete_older_than("sheets/", cutoff) == 1
    assert not odd.exists() and file_store.get("sheets/a/b.jpg") == b"keep"


def test_oss_store_crc_mismatch_is_transient(fake: FakeOss, settings: Settings) -> None:
    # The store checks CRC-64 itself (oss2's own check is off for speed): a wrong CRC in either direction is
    # a Transient error, so the event is retried, and the good bytes are still readable afterwards.
    fake.create_bucket("thumbs")
    store = thumbnail_store_from_url(f"oss://thumbs?endpoint={ENDPOINT}", settings)
    from receiver import metrics

    failed_puts = metrics._calls.get(("oss", "PutObject", "Transient", "default"), 0)
    fake.corrupt_crc_next(1)
    with pytest.raises(Transient, match="crc mismatch after upload"):
        store.put("a.jpg", b"thumb" * 100, "image/jpeg")
    # Counted as the failed call it is (receiver_external_calls), not as a success.
    assert metrics._calls.get(("oss", "PutObject", "Transient", "default"), 0) == failed_puts + 1
    fake.corrupt_crc_next(1)
    with pytest.raises(Transient, match="crc mismatch"):
        store.get("a.jpg")
    assert store.get("a.jpg") == b"thumb" * 100


def clear_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def test_oss_sessions_read_the_environment_once(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    # Without a proxy the stores send through urllib3 directly, with the CA bundle requests would have
    # used; requests' session (kept for streamed uploads) does not re-read os.environ per request either.
    # With a proxy, oss2's requests session applies the proxy and NO_PROXY rules per request.
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/custom-ca.pem")
    clear_proxies(monkeypatch)
    plain = OssSourceStore(settings)
    try:
        assert isinstance(plain._session, DirectSession)
        assert plain._session.pool.connection_pool_kw["ca_certs"] == "/etc/ssl/custom-ca.pem"
        assert plain._session.session.trust_env is False
        assert plain._session.session.verify == "/etc/ssl/custom-ca.pem"
    finally:
        plain.close()
    monkeypatch.setenv("NO_PROXY", "localhost,.internal")  # no proxy configured: still nothing to look up
    no_proxy_only = OssSourceStore(settings)
    try:
        assert isinstance(no_proxy_only._session, DirectSession)
    finally:
        no_proxy_only.close()
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    proxied = OssSourceStore(settings)
    try:
        assert isinstance(proxied._session, ProxiedSession)
        assert proxied._session.session.trust_env is True
    finally:
        proxied.close()


def test_oss_store_batch_delete_chunks(fake: FakeOss, settings: Settings) -> None:
    keys = [f"k{i:04d}.jpg" for i in range(1001)]
    for k in keys:
        fake.put("thumbs", k, b"x")
    store = thumbnail_store_from_url(f"oss://thumbs?endpoint=http://{fake.host}", settings)
    store.delete(keys)
    assert fake.keys("thumbs") == []
    assert [r["method"] for r in fake.requests] == ["POST", "POST"]


def test_oss_store_errors(fake: FakeOss, settings: Settings) -> None:
    store = thumbnail_store_from_url(f"oss://nosuch?endpoint={ENDPOINT}", settings)
    with pytest.raises(ObjectNotFound):
        store.put("a.jpg", b"x", "image/jpeg")
    fake.create_bucket("thumbs")
    store = thumbnail_store_from_url(f"oss://thumbs?endpoint={ENDPOINT}", settings)
    fake.fail_next("PUT", 1, status=503, code="ServiceUnavailable")
    with pytest.raises(Transient):
        store.put("a.jpg", b"x", "image/jpeg")


def test_store_from_file_urls(tmp_path: Path, settings: Settings) -> None:
    absolute = thumbnail_store_from_url(f"file://{tmp_path}/t", settings)
    assert isinstance(absolute, FileThumbnailStore) and absolute.root == tmp_path / "t"
    relative = thumbnail_store_from_url("file://var/thumbs", settings)
    assert isinstance(relative, FileThumbnailStore) and relative.root == Path.cwd() / "var/thumbs"
    default = thumbnail_store_from_url(settings.thumbnail_store, settings)
    assert isinstance(default, FileThumbnailStore) and default.root == (tmp_path / "thumbnails").resolve()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("s3://bucket/x", "scheme must be file:// or oss://"),
        ("/plain/path", "scheme must be"),
        ("file://", "no path"),
        ("oss:///prefix?endpoint=x.aliyuncs.com", "no bucket"),
        ("oss://thumbs/prefix", "needs ?endpoint="),
        ("oss://thumbs?endpoint=x.aliyuncs.com&region=cn", "unknown parameter"),
        ("oss://thumbs?endpoint=x.aliyuncs.com&redirect=maybe", "redirect must be a boolean"),
        ("oss://Bad_Bucket?endpoint=x.aliyuncs.com", "Bad_Bucket"),
        ("oss://thumbs?endpoint=bad host", "invalid OSS endpoint"),
    ],
)
def test_store_url_errors(settings: Settings, url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("?", r"\?")):
        thumbnail_store_from_url(url, settings)


def test_oss_store_needs_credentials(settings: Settings) -> None:
    with pytest.raises(ValueError, match="ACCESS_KEY"):
        thumbnail_store_from_url(f"oss://thumbs?endpoint={ENDPOINT}", settings.with_(access_key_id=None))


def test_fake_request_log_is_complete(fake: FakeOss, source: OssSourceStore) -> None:
    fake.put(BUCKET, "a.jpg", b"x")
    start = time.time()
    source.get(ENDPOINT, BUCKET, "a.jpg", max_bytes=10)
    assert time.time() - start < 5
    (entry,) = fake.requests
    assert entry["method"] == "GET" and entry["bucket"] == BUCKET and entry["key"] == "a.jpg"
    assert entry["auth"] == "v1" and entry["status"] == 200 and entry["request_id"]


# --- the transport under oss2 (receiver.adapters.oss_transport) -----------------------------------------------------


@pytest.fixture
def direct_session() -> Iterator[DirectSession]:
    s = DirectSession(4)
    yield s
    s.close()


def test_connections_are_reused(fake: FakeOss, settings: Settings) -> None:
    # One keep-alive connection serves a worker's GETs, HEADs and an early-closed oversized GET's successor
    # is a fresh one (its unread body must not be handed to the next request).
    fake.put(BUCKET, "a.jpg", b"a" * 300_000)
    fake.put(BUCKET, "big.jpg", b"b" * 2_000)
    store = OssSourceStore(settings)
    try:
        before = fake.connections_accepted
        for _ in range(20):
            assert store.get(ENDPOINT, BUCKET, "a.jpg", 1_000_000).size == 300_000
            assert store.head(ENDPOINT, BUCKET, "a.jpg").size == 300_000
        assert fake.connections_accepted - before == 1
        with pytest.raises(TooLarge):
            store.get(ENDPOINT, BUCKET, "big.jpg", 1_000)
        assert store.get(ENDPOINT, BUCKET, "a.jpg", 1_000_000).data == b"a" * 300_000
        assert fake.connections_accepted - before == 2
    finally:
        store.close()


def test_existence_checks_release_their_connection(fake: FakeOss, settings: Settings) -> None:
    # oss2 never reads the answer to object_exists' HEAD; the transport does, so the connection goes back to
    # the pool at once instead of one socket per check until the garbage collector runs.
    fake.create_bucket("thumbs")
    fake.put("thumbs", "a.jpg", b"x")
    store = thumbnail_store_from_url(f"oss://thumbs?endpoint={ENDPOINT}", settings)
    try:
        before = fake.connections_accepted
        assert all(store.exists("a.jpg") for _ in range(10)) and not store.exists("b.jpg")
        assert fake.connections_accepted - before == 1
    finally:
        store.close()  # type: ignore[attr-defined]


def test_query_parameters_match_requests(fake: FakeOss, direct_session: DirectSession) -> None:
    # Listing sends several parameters, empty ones and ones oss2 leaves as None for the transport to drop:
    # the fake must receive exactly what oss2's requests session sends, and answer the same pages.
    for name in ("a/1 x.jpg", "a/2+y.jpg", "a/3&z=.jpg", "a/4%20é.jpg", "b/5.jpg"):
        fake.put(BUCKET, name, b"x")
    seen = []
    for s in (direct_session, oss2.Session()):
        bucket = oss2.Bucket(oss2.Auth(AK, SK), fake.url, BUCKET, session=s)
        start = len(fake.requests)
        listed = [o.key for o in oss2.ObjectIteratorV2(bucket, prefix="a/", delimiter="", max_keys=2)]
        assert listed == ["a/1 x.jpg", "a/2+y.jpg", "a/3&z=.jpg", "a/4%20é.jpg"]
        seen.append([(r["query"], r["status"]) for r in fake.requests[start:]])
        s.session.close()
    assert seen[0] == seen[1]
    assert len(seen[0]) == 2


def test_streamed_upload_goes_through_requests(fake: FakeOss, direct_session: DirectSession) -> None:
    # A file object needs requests' streamed-body handling; the direct session hands it over (the stores
    # only send bytes, so this is the one path left to requests).
    bucket = oss2.Bucket(oss2.Auth(AK, SK), fake.url, BUCKET, session=direct_session)
    bucket.put_object("streamed.jpg", io.BytesIO(b"s" * 10_000))
    assert bucket.get_object("streamed.jpg").read() == b"s" * 10_000
    assert [r["status"] for r in fake.requests[-2:]] == [200, 200]


class _Redirecting(http.server.BaseHTTPRequestHandler):
    target = ""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.send_response(301)
        self.send_header("Location", self.target + self.path)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_redirects_are_not_followed(fake: FakeOss, tmp_path: Path) -> None:
    # An object request answered with a redirect is an error, not a hop to wherever Location points
    # (OSS does not redirect object GETs; a man in the middle or a misconfigured map might).
    fake.put(BUCKET, "a.jpg", b"x")
    handler = type("Handler", (_Redirecting,), {"target": fake.url})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    store = OssSourceStore(Settings(data_dir=tmp_path, access_key_id=AK, access_key_secret=SK,
                                 oss_endpoint_map={ENDPOINT: f"http://127.0.0.1:{server.server_port}"}))
    try:
        with pytest.raises(StoreError, match="status 301"):
            store.get(ENDPOINT, BUCKET, "a.jpg", 1_000)
        assert fake.fetched(key="a.jpg") == []
    finally:
        store.close()
        server.shutdown()
        server.server_close()


def test_tls_is_verified_against_the_configured_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An HTTPS endpoint whose certificate no trusted CA signed is refused before any request is sent; with
    # REQUESTS_CA_BUNDLE naming its CA (as requests would read it) the same endpoint is reached.
    clear_proxies(monkeypatch)  # the direct transport...
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)  # ...with certifi's bundle
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Redirecting)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.socket.settimeout(5)  # the handshake runs in accept(): a stalled client must not hang shutdown()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    settings = Settings(data_dir=tmp_path, access_key_id=AK, access_key_secret=SK,
                        oss_endpoint_map={ENDPOINT: f"https://127.0.0.1:{server.server_port}"})
    try:
        store = OssSourceStore(settings)
        try:
            with pytest.raises(Transient, match="CERTIFICATE_VERIFY_FAILED"):
                store.get(ENDPOINT, BUCKET, "a.jpg", 1_000)
        finally:
            store.close()
        with ca.cert_pem.tempfile() as ca_file:
            monkeypatch.setenv("REQUESTS_CA_BUNDLE", ca_file)
            trusting = OssSourceStore(settings)
            try:
                with pytest.raises(StoreError, match="status 301"):  # TLS accepted; the server's answer
                    trusting.get(ENDPOINT, BUCKET, "a.jpg", 1_000)
            finally:
                trusting.close()
    finally:
        server.shutdown()
        server.server_close()


def test_refused_connection_is_transient(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    store = OssSourceStore(Settings(data_dir=tmp_path, access_key_id=AK, access_key_secret=SK,
                                 oss_endpoint_map={ENDPOINT: f"http://127.0.0.1:{port}"}))
    try:
        with pytest.raises(Transient, match="RequestError"):
            store.get(ENDPOINT, BUCKET, "a.jpg", 1_000)
    finally:
        store.close()


def test_thumbnail_store_put_keeps_its_headers(fake: FakeOss, settings: Settings) -> None:
    # A PUT through urllib3 carries the Content-Type oss2 signed (the fake checks the signature over it).
    fake.create_bucket("thumbs")
    store = thumbnail_store_from_url(f"oss://thumbs/p?endpoint={ENDPOINT}", settings)
    assert isinstance(store, OssThumbnailStore) and isinstance(store.bucket.session, DirectSession)
    try:
        store.put("ab/cd/320.jpg", b"\xff\xd8" + b"t" * 5000, "image/jpeg")
        assert store.get("ab/cd/320.jpg") == b"\xff\xd8" + b"t" * 5000
        assert store.bucket.head_object("p/ab/cd/320.jpg").content_type == "image/jpeg"
    finally:
        store.close()


# --- integrity without CRC (issue 14 item 7) --------------------------------------------------------------


def _integrity_count(check: str) -> int:
    from receiver import metrics

    return metrics._calls.get(("oss", "GetObject.integrity", check, "default"), 0)


def test_integrity_crc64_when_sent(fake: FakeOss, source: OssSourceStore) -> None:
    # Real OSS: CRC-64 is sent and checked; the check is on the result and in the metrics.
    fake.put(BUCKET, "a.jpg", b"\xff\xd8" + b"c" * 3000)
    before = _integrity_count("crc64")
    assert source.get(ENDPOINT, BUCKET, "a.jpg", max_bytes=10_000).integrity == "crc64"
    assert _integrity_count("crc64") == before + 1
    fake.corrupt_body_next(1)  # bytes damaged, headers (CRC, ETag, length) right: only the CRC can tell
    with pytest.raises(Transient, match="crc mismatch"):
        source.get(ENDPOINT, BUCKET, "a.jpg", max_bytes=10_000)


def test_integrity_without_crc_or_length_uses_the_md5_etag(fake: FakeOss, source: OssSourceStore) -> None:
    # A server that sends neither x-oss-hash-crc64ecma nor Content-Length (chunked): a single-PUT ETag is
    # the MD5 of the bytes, so that is what is checked.
    fake.omit_crc, fake.chunked = True, True
    data = b"\xff\xd8" + b"m" * 40_000
    fake.put(BUCKET, "a.jpg", data)
    got = source.get(ENDPOINT, BUCKET, "a.jpg", max_bytes=100_000)
    assert (got.data, got.integrity) == (data, "md5")
    fake.corrupt_body_next(1)
    with pytest.raises(Transient, match="md5 mismatch"):
        source.get(ENDPOINT, BUCKET, "a.jpg", max_bytes=100_000)
    # A short chunked body (no length to compare with) fails in the transport: Transient too.
    fake.truncate_next(1)
    with pytest.raises(Transient):
        source.get(ENDPOINT, BUCKET, "a.jpg", max_bytes=100_000)


def test_integrity_multipart_etag_falls_back_to_the_length(fake: FakeOss, source: OssSourceStore) -> None:
    # A multipart ETag ("<hex>-<parts>") is not an MD5 of the bytes: never compared, so a good object is not
    # failed for it. Without a CRC the Content-Length is what is left.
    fake.omit_crc = True
    data = b"\xff\xd8" + b"p" * 50_000
    etag = fake.put(BUCKET, "mp.jpg", data, multipart=True)
    assert etag.endswith("-1")
    got = source.get(ENDPOINT, BUCKET, "mp.jpg", max_bytes=100_000)
    assert (got.data, got.etag, got.integrity) == (data, etag, "length")
    fake.truncate_next(1)  # fewer bytes than the Content-Length said
    with pytest.raises(Transient):
        source.get(ENDPOINT, BUCKET, "mp.jpg", max_bytes=100_000)
    # Chunked too: nothing is left to check against, and the result says so rather than claiming a check.
    fake.chunked = True
    before = _integrity_count("none")
    assert source.get(ENDPOINT, BUCKET, "mp.jpg", max_bytes=100_000).integrity == "none"
    assert _integrity_count("none") == before + 1


def test_verify_body_checks_in_order() -> None:
    from receiver.adapters.oss_common import crc64 as our_crc64
    from receiver.adapters.oss_common import verify_body

    data = b"bytes"
    md5 = "4B3A6218BB3E3A7303E8A171A60FCF92"  # md5(b"bytes")
    assert verify_body("w", data, crc=our_crc64(data), etag="x-1", length=5) == "crc64"
    assert verify_body("w", data, crc=None, etag=md5, length=None) == "md5"
    assert verify_body("w", data, crc=None, etag=md5.lower(), length=5) == "md5"
    # An appendable object's ETag is not its MD5 either, whatever it looks like.
    assert verify_body("w", data, crc=None, etag="0" * 32, length=5,
                       headers={"x-oss-object-type": "Appendable"}) == "length"
    with pytest.raises(Transient, match="crc mismatch"):
        verify_body("w", data, crc=our_crc64(data) ^ 1, etag=md5, length=5)
    with pytest.raises(Transient, match="md5 mismatch"):
        verify_body("w", data, crc=None, etag="0" * 32, length=5)
    with pytest.raises(Transient, match="truncated"):
        verify_body("w", data, crc=None, etag="x-1", length=6)


def test_thumbnail_store_verifies_without_crc(fake: FakeOss, settings: Settings) -> None:
    fake.create_bucket("thumbs")
    store = thumbnail_store_from_url(f"oss://thumbs?endpoint={ENDPOINT}", settings)
    assert isinstance(store, OssThumbnailStore)
    try:
        fake.omit_crc, fake.chunked = True, True
        store.put("a.jpg", b"thumb" * 100, "image/jpeg")
        fake.corrupt_body_next(1)
        with pytest.raises(Transient, match="md5 mismatch"):
            store.get("a.jpg")
        assert store.get("a.jpg") == b"thumb" * 100
    finally:
        store.close()


# --- every oss2 failure leaves the adapters as the receiver's own error (issue 14 item 6) -----------------


@pytest.mark.parametrize(("how", "raised"), [("namespace", "RuntimeError"), ("garbage", "ParseError")])
def test_unparseable_listing_is_transient(fake: FakeOss, settings: Settings, how: str, raised: str) -> None:
    fake.create_bucket("thumbs")
    fake.put("thumbs", "t/storyboards/ab/old.jpg", b"x", last_modified=time.time() - 40 * 86400)
    store = thumbnail_store_from_url(f"oss://thumbs/t?endpoint={ENDPOINT}", settings)
    assert isinstance(store, OssThumbnailStore)
    try:
        fake.break_listing_next(1, how)
        with pytest.raises(Transient, match=f"unreadable answer \\({raised}") as info:
            store.delete_older_than("storyboards/", time.time())
        assert "\n" not in str(info.value)
        assert type(info.value.__cause__).__module__.split(".")[0] in ("builtins", "xml")
        assert fake.keys("thumbs") == ["t/storyboards/ab/old.jpg"]  # nothing deleted on a failed listing
        assert store.delete_older_than("storyboards/", time.time()) == 1  # the next answer is fine
    finally:
        store.close()


def test_unparseable_header_is_transient(fake: FakeOss, source: OssSourceStore,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # oss2 raises a bare ValueError for a Last-Modified that is not RFC 1123 (design/oss.md section 3).
    fake.put(BUCKET, "a.jpg", b"x")
    real_read = fake._read

    def bad_date(*args: object, **kwargs: object) -> object:
        reply = real_read(*args, **kwargs)  # type: ignore[arg-type]
        reply.headers["Last-Modified"] = "2026-11-28T12:00:00Z"
        return reply

    monkeypatch.setattr(fake, "_read", bad_date)
    with pytest.raises(Transient, match="unreadable answer \\(ValueError"):
        source.head(ENDPOINT, BUCKET, "a.jpg")
    with pytest.raises(Transient, match="unreadable answer \\(ValueError"):
        source.get(ENDPOINT, BUCKET, "a.jpg", max_bytes=10)


def test_our_own_bugs_are_not_translated() -> None:
    from receiver.adapters.oss_common import translated

    with pytest.raises(KeyError), translated("oss://x/y"):
        raise KeyError("ours")


# --- presigned URLs browsers follow never name a VPC -internal host ---------------------------------------


INTERNAL = "oss-cn-shanghai-internal.aliyuncs.com"


def _fetch_via_fake(fake: FakeOss, url: str, bucket: str) -> bytes:
    # The public host is not reachable here; the V1 signature does not cover the host, so the same path and
    # query against the fake (path style) proves the URL's signature.
    parts = urllib.parse.urlsplit(url)
    with urllib.request.urlopen(f"{fake.url}/{bucket}{parts.path}?{parts.query}", timeout=5) as r:
        return bytes(r.read())


def test_presign_switches_internal_endpoints_to_public(fake: FakeOss, settings: Settings) -> None:
    fake.put(BUCKET, "cam1/a.jpg", b"orig")
    fake.create_bucket("thumbs")
    fake.put("thumbs", "t/ab/x.jpg", b"thumb")
    # The README's example: the thumbnail store configured on the -internal endpoint (reached here at the
    # fake through the map), and a job's public endpoint mapped to the -internal address.
    s = settings.with_(oss_endpoint_map={ENDPOINT: fake.url, INTERNAL: fake.url})
    thumbs = thumbnail_store_from_url(f"oss://thumbs/t?endpoint={INTERNAL}&redirect=1", s)
    direct = thumbnail_store_from_url(f"oss://thumbs/t?endpoint=https://{INTERNAL}&redirect=1",
                                      settings.with_(oss_endpoint_map={}))
    assert isinstance(thumbs, OssThumbnailStore) and isinstance(direct, OssThumbnailStore)
    mapped = OssSourceStore(settings.with_(oss_endpoint_map={ENDPOINT: f"https://{INTERNAL}"}))
    try:
        for url in (thumbs.presign("ab/x.jpg", 60), direct.presign("ab/x.jpg", 60)):
            assert url is not None
            assert urllib.parse.urlsplit(url).hostname == "thumbs.oss-cn-shanghai.aliyuncs.com", url
            assert urllib.parse.urlsplit(url).scheme == "https"
            assert _fetch_via_fake(fake, url, "thumbs") == b"thumb"
        original = mapped.presign(ENDPOINT, BUCKET, "cam1/a.jpg", 60)
        assert urllib.parse.urlsplit(original).hostname == f"{BUCKET}.oss-cn-shanghai.aliyuncs.com"
        assert _fetch_via_fake(fake, original, BUCKET) == b"orig"
        # A public endpoint mapped to a local address keeps that address (tests, the demo).
        plain = thumbnail_store_from_url(f"oss://thumbs/t?endpoint={ENDPOINT}&redirect=1", s)
        assert isinstance(plain, OssThumbnailStore)
        assert str(plain.presign("ab/x.jpg", 60)).startswith(fake.url)
        plain.close()
    finally:
        thumbs.close()
        direct.close()
        mapped.close()
