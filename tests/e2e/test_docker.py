"""The Docker image and compose file, checked without a Docker engine: linters plus the wiring that matters."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed (.ci/run / the test extra install it)")
        pytest.skip(f"{name} is not installed")
    return found


def test_dockerfile_passes_hadolint() -> None:
    out = subprocess.run([tool("hadolint"), str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_entrypoint_passes_shellcheck() -> None:
    out = subprocess.run([tool("shellcheck"), str(ROOT / "docker/entrypoint.sh")], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerfile_contract() -> None:
    text = (ROOT / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines()]
    assert lines.count("FROM python:3.11-slim") == 1 and "FROM python:3.11-slim AS build" in lines
    user = [line for line in lines if line.startswith("USER ")]
    assert user and user[-1] != "USER root" and user[-1] != "USER 0"
    assert any(line.startswith("HEALTHCHECK") for line in lines)
    assert 'ENTRYPOINT ["receiver-entrypoint"]' in lines
    entry = (ROOT / "docker/entrypoint.sh").read_text()
    assert entry.index("receiver db upgrade") < entry.index("exec gunicorn -c /app/gunicorn.conf.py")
    assert "exec receiver worker" in entry


def test_compose_runs_web_worker_postgres_redis() -> None:
    doc = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = doc["services"]
    assert set(services) == {"web", "worker", "postgres", "redis"}
    for name in ("web", "worker"):
        env = services[name]["environment"]
        assert env["RECEIVER_QUEUE"] == "celery" and env["RECEIVER_BROKER_URL"].startswith("redis://redis:")
        assert env["RECEIVER_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert services["web"]["command"] == ["web"] and services["worker"]["command"][0] == "worker"
    assert services["worker"]["depends_on"]["web"]["condition"] == "service_healthy"
