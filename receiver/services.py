"""The Services type: what every path (web, intake, workers, operations) is handed. Built only in receiver.app."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from flask import Flask, current_app
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from receiver.accounts import DEFAULT, Account, Accounts, default_account
from receiver.adapters.base import EndpointRules, IceGateway, JobInfo, SourceStore, ThumbnailStore
from receiver.adapters.credentials import AccountCredential
from receiver.adapters.ratelimit import TokenBucket
from receiver.config import Settings
from receiver.db.models import EventOrigin
from receiver.exceptions import Transient
from receiver.metrics import Metrics

log = logging.getLogger(__name__)

EXTENSION = "receiver"


class Dispatcher(Protocol):
    """Gets event ids to process_event: threads or processes in this process, or Celery (receiver.worker)."""

    def submit(self, event_ids: Iterable[int]) -> None: ...
    def start(self) -> None: ...
    def stop(self, wait: bool = True) -> None: ...


class Inbox(Protocol):
    """The callback path's writer (receiver.intake.inbox.GroupCommitter): records parsed items, commits."""

    @property
    def engine(self) -> Engine: ...
    # Items are intake.parse.EventItem and the answer an intake.inbox.Recorded; named loosely here because
    # this type sits below the intake package.
    def record(self, items: list[Any], origin: EventOrigin = EventOrigin.CALLBACK) -> Any: ...
    def close(self) -> None: ...


class Loop(Protocol):
    """A background loop this process runs (receiver.ops.maintenance): stopped, and its leases handed over, on close."""

    def stop(self) -> None: ...


@dataclass
class AccountGateways:
    """What one account's work goes through: its credential object, its ICE gateway (cached, on its own token
    bucket and endpoint) and its OSS source store, all signing with that one credential."""

    account: Account
    credential: AccountCredential | None
    ice: IceGateway
    source: SourceStore
    bucket: TokenBucket | None = None


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
    policy: EndpointRules
    intake: Inbox
    metrics: Metrics = field(default_factory=Metrics)
    dispatcher: Dispatcher | None = None
    maintenance: Loop | None = None
    # The JobInfo each job's row was last written from: the gateway hands back the same object until its
    # cache entry expires, so an identical object means the row is already current (worker.pipeline).
    upserted_jobs: dict[str, JobInfo] = field(default_factory=dict)
    # job id -> the account it belongs to, once its row says so (worker.pipeline; owners never change).
    job_accounts: dict[str, str] = field(default_factory=dict)
    # What the composition root asks to be done when these Services close, after the workers stop and before
    # the engines go (receiver.app: the worker's SQLite claim lock).
    on_close: list[Callable[[], None]] = field(default_factory=list)
    # Every account served (product.md section 7) and its gateways; `ice` and `source` above are `default`'s
    # (or the primary account's), for code that predates accounts and for single-account receivers.
    accounts: Accounts | None = None
    gateways: dict[str, AccountGateways] = field(default_factory=dict)
    account: str = DEFAULT
    _views: dict[str, Services] = field(default_factory=dict, repr=False)

    def account_list(self) -> Accounts:
        return self.accounts if self.accounts is not None else Accounts({DEFAULT: default_account(self.settings)})

    def for_account(self, alias: str) -> Services:
        """These Services as seen by one account's work: ``ice`` and ``source`` are that account's. Views share
        everything else (engines, dispatcher, caches) and are never closed themselves."""
        if alias == self.account or (not self.gateways and alias == DEFAULT):
            return self
        view = self._views.get(alias)
        if view is None:
            gw = self.gateways.get(alias)
            if gw is None:
                # Events keep their account; one missing from the configuration waits (and can be replayed
                # once it is back) rather than being judged by another account's credentials.
                raise Transient(f"account {alias!r} is not configured (RECEIVER_ACCOUNTS_FILE)")
            view = replace(self, ice=gw.ice, source=gw.source, account=alias, _views={})
            self._views[alias] = view
        return view

    def close(self) -> None:
        maintenance, self.maintenance = self.maintenance, None
        if maintenance is not None:
            maintenance.stop()  # and hand its leases over
        if self.dispatcher is not None:
            self.dispatcher.stop()
        # Pooled OSS connections left open would leak sockets (and warnings) in every test and restart.
        for store in (self.source, self.thumbs, *(gw.source for gw in self.gateways.values())):
            close = getattr(store, "close", None)
            if close is not None:
                close()
        for hook in self.on_close:
            hook()
        self.intake.close()
        if self.intake.engine is not self.engine:
            self.intake.engine.dispose()
        self.engine.dispose()


def services(app: Flask) -> Services:
    """The app's Services (set by receiver.app.create_app)."""
    svc = app.extensions[EXTENSION]
    assert isinstance(svc, Services)
    return svc


def current_services() -> Services:
    """The Services of the app handling the current request."""
    return services(current_app)
