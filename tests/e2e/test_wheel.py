"""A wheel built from this tree, installed outside it, migrates a fresh database (what the Docker image does).

The wheel is built with `pip wheel` from a copy of exactly what the Dockerfile's build stage copies, so a stale
build/ or egg-info in the checkout cannot leak into it. It is installed with `pip install --no-deps --target`
and run by this interpreter (its site-packages supply the dependencies) from a folder outside the source tree,
with PYTHONPATH naming the install: `python -m receiver db upgrade` and the `receiver` console script, each on a
fresh SQLite file, must bring it to the head revision of the migrations in this tree.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import sqlite3
import subprocess
import sys
import tomllib
import zipfile
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from packaging.requirements import Requirement
from packaging.version import Version

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
# What the Dockerfile's build stage copies before `pip wheel` (the readme is part of the metadata).
SOURCES = ("pyproject.toml", "README.md", "receiver")
IGNORED = ("__pycache__", "*.pyc")


def _venv_can_build() -> bool:
    """Whether this venv's own build backend can build the wheel (`--no-build-isolation`, no index needed): it
    meets [build-system] and can make wheels (setuptools >= 70.1 has bdist_wheel; before that, `wheel` does)."""
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]
    if build.get("build-backend") != "setuptools.build_meta":
        return False
    try:
        for req in map(Requirement, build["requires"]):
            if not req.specifier.contains(importlib.metadata.version(req.name), prereleases=True):
                return False
        if Version(importlib.metadata.version("setuptools")) >= Version("70.1"):
            return True
        importlib.metadata.version("wheel")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def run(cmd: list[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120) -> str:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{cmd} exited {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out.stdout


@dataclass(frozen=True)
class Installed:
    src: Path  # the copy the wheel was built from (the checkout may change under a running test)
    wheel: Path
    target: Path  # `pip install --target`: the package and bin/receiver
    outside: Path  # the working directory of every run: not the source tree, nothing importable in it


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("wheel")
    src, dist, target, outside = base / "src", base / "dist", base / "site", base / "elsewhere"
    src.mkdir()
    outside.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns(*IGNORED))
        else:
            shutil.copy2(ROOT / name, src / name)

    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    # Offline when this venv has a capable setuptools; otherwise pip fetches [build-system] from the index.
    isolation = ["--no-build-isolation", "--no-index"] if _venv_can_build() else []
    run([*pip, "wheel", "--no-deps", *isolation, "--wheel-dir", str(dist), str(src)], cwd=outside, timeout=600)
    wheels = sorted(dist.glob("receiver-*.whl"))
    assert len(wheels) == 1, wheels
    run([*pip, "install", "--no-deps", "--no-index", "--target", str(target), str(wheels[0])], cwd=outside)
    return Installed(src, wheels[0], target, outside)


def env_for(inst: Installed, db: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECEIVER_", "PYTHON"))}
    env.update(PYTHONPATH=str(inst.target), PYTHONDONTWRITEBYTECODE="1",
               RECEIVER_DATA_DIR=str(db.parent / "data"), RECEIVER_DATABASE_URL=f"sqlite:///{db}")
    return env


def source_head(inst: Installed) -> str:
    head = ScriptDirectory(str(inst.src / "receiver" / "db" / "migrations")).get_current_head()
    assert head is not None
    return head


def assert_at_head(inst: Installed, db: Path) -> None:
    with closing(sqlite3.connect(db)) as conn:
        versions = [row[0] for row in conn.execute("SELECT version_num FROM alembic_version")]
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert versions == [source_head(inst)]
    code = "from receiver.db.models import Base; print(*Base.metadata.tables, sep='\\n')"
    declared = run([sys.executable, "-c", code], cwd=inst.outside, env=env_for(inst, db)).split()
    assert declared
    missing = set(declared) - tables
    assert not missing, f"tables the models declare but the migrations did not create: {sorted(missing)}"


def test_wheel_ships_every_file_of_the_package(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as zf:
        names = set(zf.namelist())
    source = {
        p.relative_to(installed.src).as_posix() for p in (installed.src / "receiver").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }
    assert not source - names, f"in receiver/ but not in the wheel: {sorted(source - names)}"
    for required in ("receiver/db/migrations/env.py", "receiver/db/migrations/script.py.mako"):
        assert required in names
    for folder in ("receiver/db/migrations/versions/", "receiver/web/templates/", "receiver/web/static/"):
        assert any(n.startswith(folder) for n in names), f"nothing under {folder}"


def test_installed_package_is_imported_from_the_install_not_the_tree(installed: Installed, tmp_path: Path) -> None:
    code = "import receiver, receiver.db.migrate as m; print(receiver.__file__); print(m.MIGRATIONS_DIR)"
    out = run([sys.executable, "-c", code], cwd=installed.outside, env=env_for(installed, tmp_path / "x.db"))
    module, migrations = (Path(line) for line in out.splitlines())
    assert module.is_relative_to(installed.target.resolve()), module
    assert migrations.is_relative_to(installed.target.resolve()), migrations
    assert (migrations / "env.py").is_file()


def test_python_m_receiver_db_upgrade_migrates_a_fresh_database(installed: Installed, tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    out = run([sys.executable, "-m", "receiver", "db", "upgrade"], cwd=installed.outside,
              env=env_for(installed, db))
    assert f"database at revision {source_head(installed)}" in out
    assert_at_head(installed, db)


def test_console_script_migrates_a_fresh_database_and_again_is_a_no_op(installed: Installed, tmp_path: Path) -> None:
    script = installed.target / "bin" / "receiver"
    assert script.is_file(), "the wheel declares no `receiver` console script"
    db = tmp_path / "x.db"
    for _ in range(2):
        out = run([str(script), "db", "upgrade"], cwd=installed.outside, env=env_for(installed, db))
        assert f"database at revision {source_head(installed)}" in out
        assert_at_head(installed, db)
