"""The WSGI entry point for production servers: `gunicorn -c gunicorn.conf.py receiver.wsgi:app`.

Importing this module builds the app from the environment (the only module-level create_app()). The
schema must be current: SQLite migrates itself, PostgreSQL must have had `receiver db upgrade` (the
Docker entrypoint runs it before starting gunicorn). gunicorn.conf.py starts and stops the dispatcher
in each worker process, after the fork.
"""

from __future__ import annotations

from . import create_app
from .db import ensure_schema

app = create_app()
ensure_schema(app.extensions["receiver"].engine)
