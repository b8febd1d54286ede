"""Accounts and credentials (product.md section 7), through the real SDKs against the fakes on loopback:

1. how often each credential type is renewed over a run of two accounts side by side (an AccessKey, and STS
   tokens from a credentials URI with a short lifetime), and how many ICE calls each account makes;
2. the cost of the first request after a renewal against an ordinary one: GetLiveSnapshotJob through the
   ICE SDK and a GetObject through oss2, interleaved (A, B, A, B...), the renewal forced before each B.

    .venv/bin/python bench/accounts.py [--seconds 20] [--ttl 3] [--samples 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from alibabacloud_credentials.provider import URLCredentialsProvider  # noqa: E402

from receiver.adapters.credentials import AccountCredential  # noqa: E402
from receiver.adapters.ice import SdkIceGateway, build_client  # noqa: E402
from receiver.adapters.oss_source import OssSourceStore  # noqa: E402
from receiver.config import Settings  # noqa: E402
from receiver.services import services  # noqa: E402
from receiver.sim.fake_ice import DEFAULT_UID, FakeIce  # noqa: E402
from receiver.sim.fake_oss import FakeOss  # noqa: E402
from receiver.sim.fake_sts import CredentialsUriServer, StsAuthority  # noqa: E402
from receiver.sim.frames import make_frame  # noqa: E402
from tests.support.builders import build_app  # noqa: E402

AK, SK = "benchAccessKeyId", "benchAccessKeySecret"
UID_B = "1833220977560001"
ENDPOINT = "oss-cn-shanghai.aliyuncs.com"
ACCOUNTS = """
[accounts.live-a]
uid = "{uid_a}"
ice_endpoint = "{ice}"
callback_token_env = "BENCH_A_TOKEN"
[accounts.live-a.credentials]
type = "access_key"
access_key_id_env = "BENCH_A_ID"
access_key_secret_env = "BENCH_A_SECRET"
[accounts.live-b]
uid = "{uid_b}"
ice_endpoint = "{ice}"
callback_token_env = "BENCH_B_TOKEN"
[accounts.live-b.credentials]
type = "credentials_uri"
uri = "{uri}"
"""


def side_by_side(ice: FakeIce, oss: FakeOss, sts: StsAuthority, seconds: float, ttl: float) -> dict[str, object]:
    import os

    os.environ.update(BENCH_A_TOKEN="ta", BENCH_B_TOKEN="tb", BENCH_A_ID=AK, BENCH_A_SECRET=SK)
    uri = CredentialsUriServer(sts, UID_B, ttl).start()
    tmp = Path(tempfile.mkdtemp(prefix="bench-accounts-"))
    path = tmp / "accounts.toml"
    path.write_text(ACCOUNTS.format(uid_a=DEFAULT_UID, uid_b=UID_B, ice=ice.url, uri=uri.url))
    settings = Settings(data_dir=tmp, accounts_file=str(path), oss_endpoint_map={ENDPOINT: oss.url}, workers=2,
                        thumbnail_widths=(160,), job_cache_seconds=0.0, log_level="WARNING")
    app = build_app(settings)
    svc = services(app)
    svc.dispatcher.start()  # type: ignore[union-attr]
    client = app.test_client()
    frame = make_frame(seed=1, width=320, height=180)
    calls_before = {uid: sum(v.values()) for uid, v in ice.calls_by_uid().items()}
    sent = 0
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        ms = int(time.time() * 1000) // 1000 * 1000 + sent  # unique keys, near the objects' Last-Modified
        for job, bucket, token in (("job-a", "bucket-a", "ta"), ("job-b", "bucket-b", "tb")):
            key = f"snapshot/{job}/{ms}.jpg"
            oss.put(bucket, key, frame)
            body = {"JobId": job, "OssObject": key, "OssBucket": bucket, "OssEndpoint": ENDPOINT,
                    "CreateTimestamp": ms}
            assert client.post(f"/callbacks/live-snapshot/{token}", data=json.dumps(body)).status_code == 200
        sent += 1
        time.sleep(0.1)
    elapsed = time.monotonic() - start
    time.sleep(2)
    calls = {uid: sum(v.values()) - calls_before.get(uid, 0) for uid, v in ice.calls_by_uid().items()}
    out = {
        "seconds": round(elapsed, 1), "events per account": sent,
        "renewals live-a (access_key)": svc.gateways["live-a"].credential.refreshes,  # type: ignore[union-attr]
        f"renewals live-b (credentials_uri, ttl {ttl:g}s)": svc.gateways["live-b"].credential.refreshes,  # type: ignore[union-attr]
        "credentials URI requests": len(uri.handed_out),
        "ICE calls live-a": calls.get(DEFAULT_UID, 0), "ICE calls live-b": calls.get(UID_B, 0),
        "accepted expired": sts.accepted_expired, "refused expired": sum(sts.refused_expired.values()),
    }
    svc.close()
    uri.stop()
    return out


def first_after_renewal(ice: FakeIce, oss: FakeOss, sts: StsAuthority, samples: int) -> dict[str, str]:
    uri = CredentialsUriServer(sts, UID_B, 3600).start()
    credential = AccountCredential("live-b", "credentials_uri", URLCredentialsProvider(uri=uri.url))
    gateway = SdkIceGateway(build_client(ice.url, None, None, credential=credential), credential=credential)
    settings = Settings(data_dir=Path(tempfile.mkdtemp()), oss_endpoint_map={ENDPOINT: oss.url})
    store = OssSourceStore(settings, credential, "live-b")
    oss.put("bucket-b", "bench.jpg", make_frame(seed=2, width=320, height=180))
    ops = {"ICE GetLiveSnapshotJob": lambda: gateway.get_job("job-b"),
           "OSS GetObject": lambda: store.get(ENDPOINT, "bucket-b", "bench.jpg", 10_000_000)}
    out: dict[str, str] = {}
    for name, op in ops.items():
        for _ in range(20):
            op()  # warm connections and caches
        normal, renewed = [], []
        for _ in range(samples):
            t = time.perf_counter()
            op()
            normal.append(time.perf_counter() - t)
            credential._refresh_at = 0.0  # due: the next request renews first (bench only)
            # The library keeps its own copy until 15 minutes before expiry: make it fetch too.
            credential.provider._credentials_cache._cached_value = None  # type: ignore[union-attr]
            t = time.perf_counter()
            op()
            renewed.append(time.perf_counter() - t)
        n, r = statistics.median(normal) * 1000, statistics.median(renewed) * 1000
        out[name] = f"normal {n:.2f} ms, first after a renewal {r:.2f} ms: {r / n:.2f}x"
    store.close()
    uri.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--ttl", type=float, default=3.0)
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    sts = StsAuthority()
    with FakeIce(access_keys={AK: SK}, sts=sts) as ice, FakeOss(access_keys={AK: SK}, sts=sts) as oss:
        ice.add_account(UID_B, {})
        oss.add_account(UID_B, {})
        ice.add_job("job-a", bucket="bucket-a", endpoint=ENDPOINT)
        ice.add_job("job-b", bucket="bucket-b", endpoint=ENDPOINT, owner_uid=UID_B)
        oss.create_bucket("bucket-a")
        oss.create_bucket("bucket-b", owner_uid=UID_B)
        for k, v in side_by_side(ice, oss, sts, args.seconds, args.ttl).items():
            print(f"{k}: {v}")
        for k, v in first_after_renewal(ice, oss, sts, args.samples).items():
            print(f"{k}: {v}")


if __name__ == "__main__":
    main()
