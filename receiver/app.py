"""The composition root: settings in, a Flask app with its Services out. Only entry points import this."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Flask
from sqlalchemy import Engine

from receiver.accounts import Accounts, load_accounts
from receiver.adapters.base import IceGateway, SourceStore, ThumbnailStore
from receiver.adapters.credentials import build_credentials
from receiver.adapters.ice import SdkIceGateway, build_client
from receiver.adapters.ice_cache import CachedIceGateway, SharedJobCache, scoped_job_cache
from receiver.adapters.oss_policy import EndpointPolicy
from receiver.adapters.oss_source import OssSourceStore
from receiver.adapters.ratelimit import TokenBucket
from receiver.adapters.thumbstore import thumbnail_store_from_url
from receiver.config import Settings
from receiver.db.engine import make_engine, make_session_factory, reader
from receiver.db.job_cache import DbJobCache
from receiver.intake import view as callbacks
from receiver.intake.inbox import GroupCommitter
from receiver.services import EXTENSION, AccountGateways, Dispatcher, Services
from receiver.web import accounts as accounts_api
from receiver.web import api, auth, errors, metrics_view, openapi, subscriptions, viewer
from receiver.web import health as health_api
from receiver.web import stream as live_stream
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
    app.register_blueprint(live_stream.bp)
    app.register_blueprint(subscriptions.bp)
    app.register_blueprint(viewer.bp)
    app.register_blueprint(accounts_api.bp)
    auth.init_app(app)
    metrics_view.init_app(app)
    openapi.init_app(app)
    logging.getLogger("receiver").setLevel(settings.log_level.upper())
    _warn_without_credentials(svc)
    app.wsgi_app = callbacks.FlaskRoutingBypass(app.wsgi_app, svc)  # type: ignore[method-assign]
    return app


def _warn_without_credentials(svc: Services) -> None:
    """Once per process, at start: every process that serves or works builds its app here, exactly once
    (`serve`, `worker`, each gunicorn worker via wsgi.py; a process pool's children build only Services)."""
    for alias, gw in svc.gateways.items():
        if gw.credential is not None and not gw.credential.configured and gw.account.from_file:
            log.warning("account %r has no credentials: its events wait until it has", alias)
    primary = svc.gateways.get(svc.account)
    if primary is not None and primary.credential is not None and primary.credential.configured:
        return
    if api.credentials_status(svc.settings) == "missing":
        log.warning("no Alibaba Cloud credentials (ALIBABA_CLOUD_ACCESS_KEY_ID and ALIBABA_CLOUD_ACCESS_KEY_SECRET "
                    "are not both set): callbacks are recorded, but every event will fail verifying its job with "
                    "ICE until they are set (then `receiver replay`); /readyz reports "
                    '"credentials": "missing"')


def build_gateways(settings: Settings, accounts: Accounts, environ: Mapping[str, str] | None = None,
                   shared: SharedJobCache | None = None) -> dict[str, AccountGateways]:
    """Per account: one credential object, one ICE client on its endpoint behind its token bucket and the job
    cache, and one OSS source store, all signing with that credential."""
    credentials = build_credentials(accounts, settings, environ)
    out: dict[str, AccountGateways] = {}
    for account in accounts:
        credential = credentials[account.alias]
        bucket = TokenBucket(account.ice_qps)
        if account.from_file or credential.configured:
            client = build_client(account.ice_endpoint, None, None, region=account.region,
                                  timeout_ms=settings.ice_timeout_ms, credential=credential)
        else:  # no credentials at all: the SDK answers InvalidCredentials per call, as it always did
            client = build_client(account.ice_endpoint, settings.access_key_id, settings.access_key_secret,
                                  settings.security_token, account.region, settings.ice_timeout_ms)
        sdk = SdkIceGateway(client, account=account.alias, credential=credential, bucket=bucket)
        out[account.alias] = AccountGateways(
            account=account, credential=credential, ice=CachedIceGateway.from_settings(
                sdk, settings, shared=None if shared is None else scoped_job_cache(shared, account.alias)),
            source=OssSourceStore(settings, credential if credential.configured else None, account.alias),
            bucket=bucket)
    return out


def build_services(
    settings: Settings,
    *,
    ice: IceGateway | None = None,
    source: SourceStore | None = None,
    thumbs: ThumbnailStore | None = None,
    accounts: Accounts | None = None,
    gateways: dict[str, AccountGateways] | None = None,
) -> Services:
    """``gateways`` (tests) replace the per-account ones built from ``accounts`` (default: RECEIVER_ACCOUNTS_FILE,
    read and checked here: a bad file raises ConfigError before anything is built)."""
    accounts = accounts if accounts is not None else load_accounts(settings)
    engine = make_engine(settings.database_url)
    read_engine = reader(engine)
    shared: SharedJobCache | None = None
    if gateways is None:
        shared = shared_job_cache(settings, engine, read_engine)
        gateways = build_gateways(settings, accounts, shared=shared)
    primary = accounts.primary.alias
    if ice is None:
        ice = gateways[primary].ice
    if source is None:
        source = gateways[primary].source
    if thumbs is None:
        # The receiver's own bucket is signed by the primary account's credential object (a default chain
        # that found a credentials URI included), so renewed tokens reach its presigned URLs too.
        thumbs = thumbnail_store_from_url(settings.thumbnail_store, settings, gateways[primary].credential)
    # SQLite: the callback's own engine waits at most 2.5 s for the write lock (ICE allows 3 s in all).
    intake = GroupCommitter(make_engine(settings.database_url, busy_timeout_s=2.5) if settings.is_sqlite else engine)
    svc = Services(
        settings=settings,
        engine=engine,
        sessions=make_session_factory(engine),
        read_engine=read_engine,
        readers=make_session_factory(read_engine),
        ice=ice,
        source=source,
        thumbs=thumbs,
        policy=EndpointPolicy.from_settings(settings),
        intake=intake,
        accounts=accounts,
        gateways=gateways,
        account=primary,
    )
    svc.dispatcher = make_dispatcher(svc)

    def dispatch(ids: list[int]) -> None:
        if svc.dispatcher is not None:
            svc.dispatcher.submit(ids)

    intake.on_unanswered = dispatch
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
        from receiver.worker.celery_messages import redis_url

        # As the publisher and the sweeper open it: kombu's `ssl_cert_reqs=CERT_REQUIRED` in redis-py's words.
        return RedisJobCache(redis_url(url))
    return DbJobCache(engine, read_engine)


def make_dispatcher(svc: Services) -> Dispatcher:
    """Threads (the default), worker processes, or Celery, as the settings say."""
    if svc.settings.queue == "celery":
        from receiver.worker.celery import CeleryDispatcher  # celery is an optional dependency

        return CeleryDispatcher(svc)
    if svc.settings.worker_pool == "process":
        return ProcessDispatcher(svc, svc.settings.workers, svc.settings.sweep_seconds, build_services)
    return ThreadDispatcher(svc, svc.settings.workers, svc.settings.sweep_seconds)
