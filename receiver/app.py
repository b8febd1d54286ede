"""The composition root: settings in, a Flask app with its Services out. Only entry points import this."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask
from sqlalchemy import Engine

from receiver.adapters.base import IceGateway, SourceStore, ThumbnailStore
from receiver.adapters.ice import SdkIceGateway
from receiver.adapters.ice_cache import CachedIceGateway, SharedJobCache
from receiver.adapters.oss_policy import EndpointPolicy
from receiver.adapters.oss_source import OssSourceStore
from receiver.adapters.thumbstore import thumbnail_store_from_url
from receiver.config import Settings
from receiver.db.engine import make_engine, make_session_factory, reader
from receiver.db.job_cache import DbJobCache
from receiver.intake import view as callbacks
from receiver.intake.inbox import GroupCommitter
from receiver.services import EXTENSION, Dispatcher, Services
from receiver.web import api, auth, errors, metrics_view, openapi, viewer
from receiver.web import health as health_api
from receiver.worker.dispatch import ThreadDispatcher
from receiver.worker.heartbeat import release_claimer
from receiver.worker.processes import ProcessDispatcher

__all__ = ["build_services", "create_app"]

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, **overrides: Any) -> Flask:
    """Build the app. Nothing connects here beyond creating the (lazy) engine; workers start elsewhere.

    ``overrides`` may hand in ``ice=``, ``source=``, ``thumbs=`` implementations (tests).
    """
    settings = settings or Settings.from_env()
    app = Flask("receiver")
    app.json.sort_keys = False  # type: ignore[attr-defined]
    svc = build_services(settings, **overrides)
    app.extensions[EXTENSION] = svc
    errors.register_error_handlers(app)
    app.register_blueprint(callbacks.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(health_api.bp)
    app.register_blueprint(viewer.bp)
    auth.init_app(app)
    metrics_view.init_app(app)
    openapi.init_app(app)
    logging.getLogger("receiver").setLevel(settings.log_level.upper())
    _warn_without_credentials(settings)
    app.wsgi_app = callbacks.FlaskRoutingBypass(app.wsgi_app, svc)  # type: ignore[method-assign]
    return app


def _warn_without_credentials(settings: Settings) -> None:
    """Once per process, at start: every process that serves or works builds its app here, exactly once
    (`serve`, `worker`, each gunicorn worker via wsgi.py; a process pool's children build only Services)."""
    if api.credentials_status(settings) == "missing":
        log.warning("no Alibaba Cloud credentials (ALIBABA_CLOUD_ACCESS_KEY_ID and ALIBABA_CLOUD_ACCESS_KEY_SECRET "
                    "are not both set): callbacks are recorded, but every event will fail verifying its job with "
                    "ICE until they are set (then `receiver replay`); /readyz reports "
                    '"credentials": "missing"')


def build_services(
    settings: Settings,
    *,
    ice: IceGateway | None = None,
    source: SourceStore | None = None,
    thumbs: ThumbnailStore | None = None,
) -> Services:
    engine = make_engine(settings.database_url)
    read_engine = reader(engine)
    shared: SharedJobCache | None = None
    if ice is None:
        shared = shared_job_cache(settings, engine, read_engine)
        ice = CachedIceGateway.from_settings(SdkIceGateway.from_settings(settings), settings, shared=shared)
    svc = Services(
        settings=settings,
        engine=engine,
        sessions=make_session_factory(engine),
        read_engine=read_engine,
        readers=make_session_factory(read_engine),
        ice=ice,
        source=source if source is not None else OssSourceStore(settings),
        thumbs=thumbs if thumbs is not None else thumbnail_store_from_url(settings.thumbnail_store, settings),
        policy=EndpointPolicy.from_settings(settings),
        # SQLite: the callback's own engine waits at most 2.5 s for the write lock (ICE allows 3 s in all).
        intake=GroupCommitter(make_engine(settings.database_url, busy_timeout_s=2.5) if settings.is_sqlite
                              else engine),
    )
    svc.dispatcher = make_dispatcher(svc)
    svc.on_close.append(lambda: release_claimer(svc))
    close_shared = getattr(shared, "close", None)
    if close_shared is not None:
        svc.on_close.append(close_shared)
    return svc


def shared_job_cache(settings: Settings, engine: Engine, read_engine: Engine) -> SharedJobCache:
    """Where every process of the deployment shares GetLiveSnapshotJob answers: the Redis broker when there is
    one (nothing to migrate, no database write per refresh), else the database all processes already share."""
    url = settings.broker_url or ""
    if url.startswith(("redis://", "rediss://", "unix://")):
        from receiver.adapters.job_cache_redis import RedisJobCache  # redis comes with the celery extra

        return RedisJobCache(url)
    return DbJobCache(engine, read_engine)


def make_dispatcher(svc: Services) -> Dispatcher:
    """Threads (the default), worker processes, or Celery, as the settings say."""
    if svc.settings.queue == "celery":
        from receiver.worker.celery import CeleryDispatcher  # celery is an optional dependency

        return CeleryDispatcher(svc)
    if svc.settings.worker_pool == "process":
        return ProcessDispatcher(svc, svc.settings.workers, svc.settings.sweep_seconds, build_services)
    return ThreadDispatcher(svc, svc.settings.workers, svc.settings.sweep_seconds)
