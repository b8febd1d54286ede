"""receiver: the service behind the CallbackUrl of Alibaba Cloud ICE live snapshot jobs."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask

from .config import Settings

__all__ = ["Settings", "create_app"]


def create_app(settings: Settings | None = None, **overrides: Any) -> Flask:
    """Build the app. Nothing connects here beyond creating the (lazy) engine; workers start elsewhere.

    ``overrides`` may hand in ``ice=``, ``source=``, ``thumbs=`` implementations (tests, the demo).
    """
    from . import api, auth, callbacks, errors, health_api, metrics, openapi, viewer
    from .services import build_services

    settings = settings or Settings.from_env()
    app = Flask(__name__)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.config["RECEIVER_SETTINGS"] = settings
    svc = build_services(settings, **overrides)
    app.extensions["receiver"] = svc
    errors.register_error_handlers(app)
    app.register_blueprint(callbacks.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(health_api.bp)
    app.register_blueprint(viewer.bp)
    auth.init_app(app)
    metrics.init_app(app)
    openapi.init_app(app)
    logging.getLogger("receiver").setLevel(settings.log_level.upper())
    app.wsgi_app = callbacks.CallbackRoute(app.wsgi_app, svc)  # type: ignore[method-assign]
    return app
