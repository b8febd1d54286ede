"""The wiring: one Services object per app, built by create_app and handed to every worker path."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from .config import Settings
from .db import make_engine, make_session_factory, reader
from .inbox import GroupCommitter

if TYPE_CHECKING:
    from .dispatch import Dispatcher
    from .ice import IceGateway
    from .oss import EndpointPolicy, SourceStore, ThumbnailStore

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    # For work that only reads (the API, metrics, the sweeper's scan): on SQLite it never takes the write
    # lock, so it cannot hold up callbacks or workers. Nothing may be written through these.
    read_engine: Engine
    readers: sessionmaker[Session]
    ice: IceGateway
    source: SourceStore
    thumbs: ThumbnailStore
    policy: EndpointPolicy
    intake: GroupCommitter
    dispatcher: Dispatcher | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def close(self) -> None:
        maintenance = self.extras.pop("maintenance", None)
        if maintenance is not None:
            maintenance.stop()  # and hand its leases over (reconcile.Maintenance)
        if self.dispatcher is not None:
            self.dispatcher.stop()
        # Pooled OSS connections left open would leak sockets (and warnings) in every test and restart.
        for store in (self.source, self.thumbs):
            close = getattr(store, "close", None)
            if close is not None:
                close()
        self.intake.close()
        if self.intake.engine is not self.engine:
            self.intake.engine.dispose()
        self.engine.dispose()


def build_services(
    settings: Settings,
    *,
    ice: IceGateway | None = None,
    source: SourceStore | None = None,
    thumbs: ThumbnailStore | None = None,
) -> Services:
    # Imported here so that importing the package never pulls in the vendor SDKs' import-time work.
    from .dispatch import make_dispatcher
    from .ice import CachedIceGateway, SdkIceGateway
    from .oss import EndpointPolicy, SourceStore, thumbnail_store_from_url

    engine = make_engine(settings.database_url)
    if ice is None:
        ice = CachedIceGateway(
            SdkIceGateway.from_settings(settings),
            ttl=settings.job_cache_seconds,
            negative_ttl=settings.job_negative_cache_seconds,
        )
    read_engine = reader(engine)
    svc = Services(
        settings=settings,
        engine=engine,
        sessions=make_session_factory(engine),
        read_engine=read_engine,
        readers=make_session_factory(read_engine),
        ice=ice,
        source=source if source is not None else SourceStore(settings),
        thumbs=thumbs if thumbs is not None else thumbnail_store_from_url(settings.thumbnail_store, settings),
        policy=EndpointPolicy.from_settings(settings),
        # SQLite: the callback's own engine waits at most 2.5 s for the write lock (ICE allows 3 s in all).
        intake=GroupCommitter(make_engine(settings.database_url, busy_timeout_s=2.5) if settings.is_sqlite
                              else engine),
    )
    svc.dispatcher = make_dispatcher(svc)
    return svc
