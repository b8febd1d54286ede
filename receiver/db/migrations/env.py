"""Alembic environment: runs on a connection handed over by receiver.db.migrate, or on sqlalchemy.url."""

from __future__ import annotations

import re

from alembic import context
from sqlalchemy import create_engine

from receiver.db import job_cache  # noqa: F401 - its table belongs to the metadata compared with the database
from receiver.db.models import Base

config = context.config
target_metadata = Base.metadata
# The day and default partitions of migration 0007 are made at run time (receiver/db/partitions.py), not
# declared in the models: comparing models with the database looks at their parents only.
_PARTITION = re.compile(r"^(?:snapshots|thumbnails|event_snapshots)_(?:p\d{8}|default)$")


def _include_name(name: str | None, type_: str, parent_names: object) -> bool:
    return not (type_ == "table" and name is not None and _PARTITION.match(name))


def _configure(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=target_metadata,
        compare_type=True,
        include_name=_include_name,
        # SQLite cannot ALTER most things; batch mode rebuilds tables instead.
        render_as_batch=True,
    )


def run_migrations_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True, render_as_batch=True, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.begin() as conn:
        _configure(conn)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
