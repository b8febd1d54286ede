"""A worker's resident memory over many frames: it must stay flat (no growth beyond 10 %).

    .venv/bin/python bench/memory.py [--frames 10000] [--kind photo] [--every 500]

Runs the real pipeline in this process, the way a worker thread does: callbacks recorded through the app,
then `process_event` for each (verify with the fake ICE, GET from the fake OSS, thumbnails, signals,
thumbnail files, index), one frame at a time. Frames are distinct 1920x1080 JPEGs (cycled from a set of 16,
each under its own key, so every event makes a new snapshot). RSS (VmRSS from /proc/self/status) is sampled
every --every frames; the baseline is the first sample after warm-up (the first --every frames), so what is
measured is growth in the steady state, not imports and caches filling once.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from receiver.config import Settings  # noqa: E402
from receiver.services import services  # noqa: E402
from receiver.sim.fake_ice import FakeIce  # noqa: E402
from receiver.sim.fake_oss import FakeOss  # noqa: E402
from receiver.sim.frames import make_frame  # noqa: E402
from receiver.worker.dispatch import due_event_ids  # noqa: E402
from receiver.worker.pipeline import process_event  # noqa: E402
from tests.support.builders import AK, BUCKET, JOB, OSS_ENDPOINT, SK, build_app, callback_body  # noqa: E402

DISTINCT = 16


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=10_000)
    ap.add_argument("--kind", default="photo", choices=["smooth", "photo", "noisy"])
    ap.add_argument("--every", type=int, default=500)
    a = ap.parse_args()
    frames = [make_frame(seed=i, kind=a.kind) for i in range(DISTINCT)]
    samples: list[tuple[int, int, float]] = []
    with FakeIce(access_keys={AK: SK}) as ice, FakeOss(access_keys={AK: SK}) as oss, \
            tempfile.TemporaryDirectory(prefix="receiver-mem-") as d:
        ice.add_job(JOB, bucket=BUCKET, endpoint=OSS_ENDPOINT)
        oss.create_bucket(BUCKET)
        settings = Settings(data_dir=Path(d), ice_endpoint=ice.url, access_key_id=AK, access_key_secret=SK,
                            oss_endpoint_map={OSS_ENDPOINT: oss.url}, workers=0, reconcile_seconds=0)
        app = build_app(settings)
        svc = services(app)
        client = app.test_client()
        t0 = time.perf_counter()
        # Near the objects' Last-Modified, as ICE sends it (a far time is logged per frame as a bad hint).
        start_ms = int(time.time() * 1000)
        done = 0
        # Frames go in per block so the fakes hold one block's objects, not 10,000 x 300 KB: this process
        # measures the worker, and the fake OSS keeping every object would dominate RSS.
        while done < a.frames:
            block = min(a.every, a.frames - done)
            keys = []
            for i in range(done, done + block):
                ms = start_ms + i
                key = f"snapshot/{JOB}/{ms}.jpg"
                oss.put(BUCKET, key, frames[i % DISTINCT])
                ice.add_file(JOB, key, ms)
                keys.append(key)
                resp = client.post("/callbacks/live-snapshot", data=callback_body(key, ms))
                assert resp.status_code == 200, resp.get_data(as_text=True)
            for event_id in due_event_ids(svc, limit=block + 10):
                outcome = process_event(svc, event_id)
                if outcome.status != "done":
                    raise SystemExit(f"event {event_id}: {outcome}")
            for key in keys:
                oss.delete(BUCKET, key)
            # The fakes log every request for tests to inspect; that log is theirs, not the worker's memory.
            oss.requests.clear()
            ice.requests.clear()
            done += block
            samples.append((done, rss_kb(), time.perf_counter() - t0))
            print(f"{done:6d} frames  RSS {samples[-1][1] / 1024:7.1f} MiB  {samples[-1][2]:6.0f} s", flush=True)
        svc.close()
    base, last = samples[0][1], samples[-1][1]
    peak = max(s[1] for s in samples)
    print(f"machine: 1 worker thread, {a.frames} x 1920x1080 {a.kind}, widths (320, 160) JPEG, SQLite")
    print(f"RSS after {samples[0][0]} frames (baseline): {base / 1024:.1f} MiB; after {samples[-1][0]}: "
          f"{last / 1024:.1f} MiB; peak {peak / 1024:.1f} MiB; growth {100 * (last - base) / base:+.1f} % "
          f"(target <= 10 %); {a.frames / samples[-1][2]:.0f} frames/s")


if __name__ == "__main__":
    main()
