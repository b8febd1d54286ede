"""Alembic migrations, shipped inside the package so an installed wheel can migrate from any folder."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


class SchemaOutOfDate(RuntimeError):
    pass


def alembic_config(url: str) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision(engine: Engine) -> str | None:
    script = ScriptDirectory.from_config(alembic_config(engine.url.render_as_string(hide_password=False)))
    return script.get_current_head()


def is_at_head(engine: Engine) -> bool:
    return current_revision(engine) == head_revision(engine)


def ensure_schema(engine: Engine) -> None:
    """SQLite (embedded) migrates itself; other databases must be upgraded deliberately."""
    if engine.dialect.name == "sqlite":
        upgrade(engine)
        return
    if not is_at_head(engine):
        raise SchemaOutOfDate(
            f"database schema is at {current_revision(engine)!r}, code expects {head_revision(engine)!r}: "
            "run `receiver db upgrade`"
        )
