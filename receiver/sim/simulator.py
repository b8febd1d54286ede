"""The demo's simulated ICE: live snapshot jobs that write frames to a fake OSS and post callbacks."""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request

from receiver.sim.fake_ice import FakeIce
from receiver.sim.fake_oss import FakeOss
from receiver.sim.frames import make_frame

log = logging.getLogger("receiver.demo")

DEMO_AK, DEMO_SK = "demoAccessKeyId", "demoAccessKeySecret"
DEMO_ENDPOINT = "oss-cn-shanghai.aliyuncs.com"
DEMO_BUCKET = "demo-snapshots"
DEMO_JOBS = ("demo-lobby-cam", "demo-stage-cam")
# Two simulated accounts: the lobby cam in the fakes' default account (an AccessKey), the stage cam in a second
# one whose only credentials are short-lived STS tokens from a credentials URI (receiver.sim.fake_sts).
DEMO_UID_A, DEMO_UID_B = "1000000000000000", "1833220977560001"
DEMO_ACCOUNTS = {"demo-lobby-cam": DEMO_UID_A, "demo-stage-cam": DEMO_UID_B}


# The stage cam cycles through every health condition (26 ticks, about two minutes at 5 s): live, frozen
# (8 identical frames), black (4), then a 30 s dropout. The lobby cam stays healthy for contrast.
CYCLE = (("live", 8), ("frozen", 8), ("black", 4), ("dropout", 6))
TROUBLED_JOB = "demo-stage-cam"


def scene(job_id: str, n: int) -> tuple[str, int]:
    """(phase, the tick whose picture to show) for tick ``n`` of ``job_id``."""
    if job_id != TROUBLED_JOB:
        return "live", n
    pos = n % sum(length for _, length in CYCLE)
    start = 0
    for phase, length in CYCLE:
        if pos < start + length:
            return phase, (n - pos + start if phase == "frozen" else n)
        start += length
    raise AssertionError("unreachable")


class Simulator:
    """Plays ICE: every interval, writes a frame per job to OSS, lists it, and posts the callback."""

    def __init__(self, ice: FakeIce, oss: FakeOss, callback_url: str, interval: float,
                 routes: dict[str, tuple[str, str]] | None = None, bucket_of: dict[str, str] | None = None) -> None:
        self.ice, self.oss, self.callback_url, self.interval = ice, oss, callback_url, interval
        # job id -> (its account's callback URL, the account's uid), as ICE would call each account's receiver.
        self.routes = routes or {}
        self.bucket_of = bucket_of or {}
        self._stop = threading.Event()
        self.sent = 0
        self.labels: dict[tuple[str, int], str] = {}

    def snapshot(self, job_id: str, n: int) -> None:
        ms = int(time.time() * 1000)
        label = f"{job_id}  #{n}  {time.strftime('%H:%M:%S', time.gmtime(ms / 1000))} UTC"
        phase, first = scene(job_id, n)
        if phase == "dropout":
            return  # the stream is down: ICE writes nothing
        # Frozen: the first frozen frame again, byte for byte (its label too); black: a covered lens.
        data = make_frame(seed=hash(job_id) % 1000 + first, kind="black" if phase == "black" else "photo",
                          text=self.labels.setdefault((job_id, first), label))
        key = f"snapshot/{job_id}/{ms}.jpg"
        bucket = self.bucket_of.get(job_id, DEMO_BUCKET)
        self.oss.put(bucket, key, data)
        self.oss.put(bucket, f"snapshot/{job_id}.jpg", data)
        self.ice.add_file(job_id, key, ms)
        url, uid = self.routes.get(job_id, (self.callback_url, DEMO_UID_A))
        body = {
            "EventType": "LiveSnapshotComplete",
            "UserId": uid,
            "EventTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "MessageBody": {"JobId": job_id, "OssBucket": bucket, "OssEndpoint": DEMO_ENDPOINT,
                            "OssObject": key, "CreateTimestamp": ms, "IsOverlay": False},
        }
        req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=3) as resp:
                resp.read()
            self.sent += 1
        except OSError as e:
            log.warning("callback for %s not delivered (%s); the reconciler will find it", job_id, e)

    def run(self) -> None:
        n = 0
        while not self._stop.wait(0 if n == 0 else self.interval):
            n += 1
            for job_id in DEMO_JOBS:
                self.snapshot(job_id, n)

    def start(self) -> None:
        threading.Thread(target=self.run, name="demo-simulator", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
