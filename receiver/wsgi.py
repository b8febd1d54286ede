"""The WSGI entry point for production servers: `gunicorn -c gunicorn.conf.py receiver.wsgi:app`.

Importing this module builds the app from the environment (the only module-level create_app()). The
schema must be current: SQLite migrates itself, PostgreSQL must have had `receiver db upgrade` (the
Docker entrypoint runs it before starting gunicorn). gunicorn.conf.py starts and stops the dispatcher
in each worker process, after the fork.
"""

from __future__ import annotations

import logging
import sys

from receiver.app import create_app
from receiver.config import Settings
from receiver.db.migrate import ensure_schema
from receiver.services import services

settings = Settings.from_env()
# gunicorn configures only its own loggers; give ours (publisher, sweeper, pipeline) the same stderr.
logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                    format="%(asctime)s %(levelname)s %(name)s [%(process)d]: %(message)s")
app = create_app(settings)
ensure_schema(services(app).engine)
