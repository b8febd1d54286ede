"""`receiver serve` as a subprocess on the embedded defaults, against the calling test's fake ICE and OSS:
started, posted to, SIGKILLed and restarted by the crash-recovery tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from receiver.sim.fake_ice import FakeIce
from receiver.sim.fake_oss import FakeOss
from tests.support.builders import AK, OSS_ENDPOINT, SK
from tests.support.pg_redis import free_port, stop_process, wait_healthy


class ServeProcess:
    def __init__(self, tmp: Path, ice: FakeIce, oss: FakeOss, **env: str) -> None:
        self.port = free_port()
        self.env = {**os.environ, "RECEIVER_DATA_DIR": str(tmp), "RECEIVER_ICE_ENDPOINT": ice.url,
                    "ALIBABA_CLOUD_ACCESS_KEY_ID": AK, "ALIBABA_CLOUD_ACCESS_KEY_SECRET": SK,
                    "RECEIVER_OSS_ENDPOINT_MAP": f"{OSS_ENDPOINT}={oss.url}", "RECEIVER_WORKERS": "1",
                    "RECEIVER_RECONCILE_SECONDS": "0", "RECEIVER_THUMBNAIL_WIDTHS": "160",
                    "RECEIVER_LOG_LEVEL": "WARNING", **env}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "receiver", "serve", "--port", str(self.port)],
                                     env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_healthy(self.port, self.proc)

    def post(self, body: bytes) -> None:
        req = urllib.request.Request(f"{self.base}/callbacks/live-snapshot", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 200

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
