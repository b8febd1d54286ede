"""Settings, read from the environment once, with explicit coercion (product.md section 5).

Each field declares its variable beside it: name, kind, default and a one-line doc. `from_env` and
`configuration_table` (the table of docs/configuration.md) both read those declarations, so the variable list,
the parsing and the documentation cannot drift apart.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from receiver.tiers import DAY_MS, MAX_AGE_MS, RetentionError, parse_retention

T = TypeVar("T")


class ConfigError(ValueError):
    """A variable has a value we cannot use; the message names it."""


def _csv(value: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in value.split(",") if p.strip())


def _int(name: str, value: str, minimum: int | None = None) -> int:
    try:
        n = int(value)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {value!r}") from None
    if minimum is not None and n < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {n}")
    return n


def _float(name: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {value!r}") from None


def _bool(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in {"1", "true", "yes", "on"}:
        return True
    if v in {"0", "false", "no", "off", ""}:
        return False
    raise ConfigError(f"{name} must be a boolean (1/0, true/false), got {value!r}")


_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _duration(name: str, value: str) -> float:
    """Seconds, from ``432000`` (a bare number is seconds) or ``90s``, ``45m``, ``12h``, ``5d``, ``2w``."""
    v = value.strip().lower()
    unit = v[-1:] if v[-1:].isalpha() else ""
    try:
        n = float(v[: len(v) - len(unit)])
    except ValueError:
        n = -1.0
    if unit not in _DURATION_UNITS or not n > 0 or n == float("inf"):
        raise ConfigError(f"{name} must be a positive duration like 432000, 12h or 5d, got {value!r}")
    return n * _DURATION_UNITS[unit]


def _float_csv(name: str, value: str) -> tuple[float, ...]:
    out = tuple(_float(name, v) for v in _csv(value))
    if not out or any(not 0 <= x < float("inf") for x in out):
        raise ConfigError(f"{name} must be a comma-separated list of seconds >= 0, got {value!r}")
    return out


def _endpoint_map(name: str, value: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in _csv(value):
        host, sep, url = item.partition("=")
        if not sep or not host.strip() or not url.strip():
            raise ConfigError(f"{name} items must be host=url, got {item!r}")
        out[host.strip().lower()] = url.strip()
    return out


# kind -> (parser, label in the documentation's Type column)
_KINDS: dict[str, tuple[Callable[[Var, str], Any], str]] = {
    "str": (lambda var, v: v, "string"),
    "path": (lambda var, v: Path(v), "path"),
    # Validated in Settings.__post_init__, so keyword construction gets the same check.
    "choice": (lambda var, v: v.strip().lower(), "choice"),
    "int": (lambda var, v: _int(var.name, v, var.minimum), "integer"),
    "float": (lambda var, v: _float(var.name, v), "number"),
    "bool": (lambda var, v: _bool(var.name, v), "boolean"),
    "csv": (lambda var, v: _csv(v), "comma-separated list"),
    "lower_csv": (lambda var, v: tuple(p.lower() for p in _csv(v)), "comma-separated list"),
    "int_csv": (lambda var, v: tuple(_int(var.name, w) for w in _csv(v)), "comma-separated integers"),
    "endpoint_map": (lambda var, v: _endpoint_map(var.name, v), "comma-separated host=url"),
    "float_csv": (lambda var, v: _float_csv(var.name, v), "comma-separated seconds"),
    "duration": (lambda var, v: _duration(var.name, v), "duration (seconds, or with s/m/h/d/w)"),
}


@dataclass(frozen=True)
class Var:
    """The environment variable of one Settings field."""

    name: str
    kind: str
    doc: str
    minimum: int | None = None
    choices: tuple[str, ...] = ()
    default_doc: str | None = None  # for defaults derived or computed at run time

    def parse(self, value: str) -> Any:
        return _KINDS[self.kind][0](self, value)

    @property
    def type_label(self) -> str:
        if self.choices:
            return " or ".join(f"`{c}`" for c in self.choices)
        label = _KINDS[self.kind][1]
        return f"{label} >= {self.minimum}" if self.minimum is not None else label


def _kind_of(default: object) -> str:
    if isinstance(default, bool):  # before int: bool is an int
        return "bool"
    for kind, cls in (("int", int), ("float", float), ("path", Path)):
        if isinstance(default, cls):
            return kind
    if isinstance(default, tuple):
        return "int_csv" if default and all(isinstance(x, int) for x in default) else "csv"
    if default is None or isinstance(default, str):
        return "str"
    raise TypeError(f"give the kind of a setting whose default is {default!r}")


def setting(name: str, default: T, doc: str, *, kind: str | None = None, minimum: int | None = None,
            choices: tuple[str, ...] = (), default_doc: str | None = None) -> T:
    """A Settings field read from `name`; the kind follows the default unless given."""
    var = Var(name, kind or ("choice" if choices else _kind_of(default)), doc, minimum, choices, default_doc)
    return field(default=default, metadata={"env": var})


def computed_setting(name: str, factory: Callable[[], T], doc: str, *, kind: str, default_doc: str,
                     minimum: int | None = None) -> T:
    """A Settings field whose default is computed per instance (mutable, or known only at run time)."""
    return field(default_factory=factory, metadata={"env": Var(name, kind, doc, minimum, (), default_doc)})


def env_var(f: Field[Any]) -> Var:
    var: Var = f.metadata["env"]
    return var


@dataclass(frozen=True)
class Settings:
    data_dir: Path = setting("RECEIVER_DATA_DIR", Path("./var"), "where the embedded defaults live: the SQLite "
                             "database and local thumbnails", default_doc="`./var`")
    database_url: str = setting("RECEIVER_DATABASE_URL", "", "any SQLAlchemy URL; `postgresql+psycopg://…` in "
                                "production", default_doc="`sqlite:///<data dir>/receiver.db`")
    thumbnail_store: str = setting("RECEIVER_THUMBNAIL_STORE", "", "`file://<dir>`, or "
                                   "`oss://<bucket>/<prefix>?endpoint=<host>`",
                                   default_doc="`file://<data dir>/thumbnails`")
    thumbnail_widths: tuple[int, ...] = setting("RECEIVER_THUMBNAIL_WIDTHS", (320, 160),
                                                "widths (8 to 4096 px) made for every snapshot")
    thumbnail_format: str = setting("RECEIVER_THUMBNAIL_FORMAT", "jpeg", "encoding of the thumbnails",
                                    choices=("jpeg", "webp"))
    thumbnail_quality: int = setting("RECEIVER_THUMBNAIL_QUALITY", 80, "encoder quality of the thumbnails",
                                     minimum=1)
    ice_endpoint: str = setting("RECEIVER_ICE_ENDPOINT", "ice.cn-shanghai.aliyuncs.com",
                                "ICE API host, or a full `http://host:port` URL")
    ice_region: str = setting("RECEIVER_ICE_REGION", "cn-shanghai", "region of the ICE API")
    access_key_id: str | None = setting("ALIBABA_CLOUD_ACCESS_KEY_ID", None, "AccessKey id for ICE and OSS")
    access_key_secret: str | None = setting("ALIBABA_CLOUD_ACCESS_KEY_SECRET", None,
                                            "AccessKey secret for ICE and OSS")
    security_token: str | None = setting("ALIBABA_CLOUD_SECURITY_TOKEN", None,
                                         "STS token, with temporary AccessKeys")
    accounts_file: str | None = setting("RECEIVER_ACCOUNTS_FILE", None, "TOML file of the accounts served "
                                         "(docs/deployment.md); unset = one account `default` on the default "
                                         "credential chain")
    ice_qps: float = setting("RECEIVER_ICE_QPS", 0.0, "ICE API calls per second of the `default` account when no "
                             "accounts file is given (0 = no limit; the file sets `ice_qps` per account)")
    oss_endpoint_map: dict[str, str] = computed_setting(
        "RECEIVER_OSS_ENDPOINT_MAP", dict, "reach a job's OSS endpoint host at another address (the "
        "`-internal` endpoint inside a VPC, or a local server)", kind="endpoint_map", default_doc="empty")
    oss_allowed_endpoints: tuple[str, ...] = setting(
        "RECEIVER_OSS_ALLOWED_ENDPOINTS", ("*.aliyuncs.com",), "host patterns (case-insensitive); the job's OSS "
        "endpoint must match one, or nothing is fetched", kind="lower_csv")
    max_image_bytes: int = setting("RECEIVER_MAX_IMAGE_BYTES", 20_000_000, "larger objects are refused", minimum=1)
    max_image_pixels: int = setting("RECEIVER_MAX_IMAGE_PIXELS", 40_000_000, "decompression-bomb guard", minimum=1)
    callback_token: str | None = setting("RECEIVER_CALLBACK_TOKEN", None, "callbacks are accepted only at "
                                         "`/callbacks/live-snapshot/<token>`")
    callback_auth_keys: tuple[str, ...] = setting("RECEIVER_CALLBACK_AUTH_KEYS", (), "keys of the callback "
                                                  "signature; several allow rotation")
    callback_max_skew: int = setting("RECEIVER_CALLBACK_MAX_SKEW", 300, "seconds `X-ICE-TIMESTAMP` may be from "
                                     "now, either way", minimum=0)
    public_url: str | None = setting("RECEIVER_PUBLIC_URL", None, "this receiver's external base URL: signatures "
                                     "are checked against it; job discovery looks for it")
    max_callback_bytes: int = setting("RECEIVER_MAX_CALLBACK_BYTES", 65536, "larger callback bodies get 413",
                                      minimum=1)
    job_cache_seconds: float = setting("RECEIVER_JOB_CACHE_SECONDS", 60.0, "how long a GetLiveSnapshotJob "
                                       "answer is reused")
    job_negative_cache_seconds: float = setting("RECEIVER_JOB_NEGATIVE_CACHE_SECONDS", 60.0, "how long a job id "
                                                "ICE does not know is remembered as unknown")
    reconcile_seconds: float = setting("RECEIVER_RECONCILE_SECONDS", 60.0, "reconciler period (0 = off)")
    reconcile_lookback_days: float = setting("RECEIVER_RECONCILE_LOOKBACK_DAYS", 1.0, "how far back the "
                                             "reconciler first looks for a job's files")
    discover_jobs: bool = setting("RECEIVER_DISCOVER_JOBS", False, "track every started job whose CallbackUrl "
                                  "points at `RECEIVER_PUBLIC_URL`")
    retention_days: float = setting("RECEIVER_RETENTION_DAYS", 0.0, "delete snapshots older than this (0 = keep "
                                    "all); ignored when `RECEIVER_RETENTION` is set")
    retention: str = setting("RECEIVER_RETENTION", "", "tiered retention, e.g. `7d:all,90d:1m,1y:1h` (see "
                             "operations.md); applied by `receiver prune` and hourly by maintenance",
                             default_doc="empty (keep all)")
    queue: str = setting("RECEIVER_QUEUE", "thread", "how events reach workers", choices=("thread", "celery"))
    worker_pool: str = setting("RECEIVER_WORKER_POOL", "thread", "how in-process workers run",
                               choices=("thread", "process"))
    broker_url: str | None = setting("RECEIVER_BROKER_URL", None, "Celery broker, e.g. "
                                     "`redis://127.0.0.1:6379/0`; needed when the queue is `celery`")
    workers: int = computed_setting("RECEIVER_WORKERS", lambda: os.cpu_count() or 2, "worker threads or "
                                    "processes (0 = `serve` only answers HTTP)", kind="int", minimum=0,
                                    default_doc="CPU count")
    api_keys: tuple[str, ...] = setting("RECEIVER_API_KEYS", (), "Bearer keys required by `/v1` (empty = open)")
    url_signing_key: str | None = setting("RECEIVER_URL_SIGNING_KEY", None, "signs thumbnail URLs; unset = the "
                                          "first API key")
    cors_origins: tuple[str, ...] = setting("RECEIVER_CORS_ORIGINS", (), "origins allowed to call `/v1` from a "
                                            "browser (`*` for any)")
    max_attempts: int = setting("RECEIVER_MAX_ATTEMPTS", 8, "tries before an event is `failed`", minimum=1)
    retry_base_seconds: float = setting("RECEIVER_RETRY_BASE_SECONDS", 1.0, "first retry delay; doubles per try")
    retry_max_seconds: float = setting("RECEIVER_RETRY_MAX_SECONDS", 300.0, "longest retry delay")
    lease_seconds: float = setting("RECEIVER_LEASE_SECONDS", 20.0, "how long a claim on an event lasts unless "
                                   "renewed; a working worker renews it every third of this, so a dead worker's "
                                   "event is taken over this long after its last renewal")
    redispatch_seconds: float = setting("RECEIVER_REDISPATCH_SECONDS", 120.0, "with Celery: how long a pending "
                                        "event may wait past its time before the sweeper sends it to the broker "
                                        "again (its message may be lost)")
    sweep_seconds: float = setting("RECEIVER_SWEEP_SECONDS", 5.0, "how often workers look in the inbox for "
                                   "due events")
    ice_timeout_ms: int = setting("RECEIVER_ICE_TIMEOUT_MS", 5000, "timeout of an ICE API call, milliseconds",
                                  minimum=1)
    oss_timeout_seconds: float = setting("RECEIVER_OSS_TIMEOUT_SECONDS", 10.0, "timeout of an OSS request")
    log_level: str = setting("RECEIVER_LOG_LEVEL", "INFO", "Python logging level")
    web_threads: int = setting("RECEIVER_WEB_THREADS", 16, "waitress threads of `serve` (gunicorn.conf.py reads "
                               "its own)", minimum=1)
    web_connections: int = setting("RECEIVER_WEB_CONNECTIONS", 2000, "open connections `serve` holds before it "
                                   "stops accepting (the open-file limit is raised to fit)", minimum=1)
    web_request_seconds: float = setting("RECEIVER_WEB_REQUEST_SECONDS", 20.0, "`serve` closes a connection whose "
                                         "request is not read whole this long after its first byte (0 = no limit)")
    health_gap_factor: float = setting("RECEIVER_HEALTH_GAP_FACTOR", 1.5, "frames further apart than this many "
                                       "intervals make a gap")
    health_stale_factor: float = setting("RECEIVER_HEALTH_STALE_FACTOR", 4.0, "silence of this many intervals "
                                         "makes a stream `stale`")
    health_frozen_hamming: int = setting("RECEIVER_HEALTH_FROZEN_HAMMING", 3, "neighbouring frames whose dHashes "
                                         "differ by at most this many bits look frozen", minimum=0)
    health_frozen_min_frames: int = setting("RECEIVER_HEALTH_FROZEN_MIN_FRAMES", 6, "consecutive frozen-looking "
                                            "frames that make a frozen run", minimum=2)
    health_black_luma: float = setting("RECEIVER_HEALTH_BLACK_LUMA", 20.0, "frames darker than this mean luma "
                                       "(0-255) may be black")
    health_black_spread: float = setting("RECEIVER_HEALTH_BLACK_SPREAD", 10.0, "a dark frame whose luma spread is "
                                         "below this is black")
    health_confirm: int = setting("RECEIVER_HEALTH_CONFIRM", 2, "evaluations (one per job interval) a new health "
                                  "status must hold before `stream.health_changed` is sent", minimum=1)
    stream_clients: int = setting("RECEIVER_STREAM_CLIENTS", 0, "open `GET /v1/stream` connections a web process "
                                  "serves before it answers 503; each holds a web thread (0 = half of "
                                  "RECEIVER_WEB_THREADS)", minimum=0)
    webhook_retry_schedule: tuple[float, ...] = setting(
        "RECEIVER_WEBHOOK_RETRY_SCHEDULE", (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0),
        "seconds before each retry of a webhook delivery that did not get a 2xx; after the last, the delivery is "
        "`failed` (replayable)", kind="float_csv", default_doc="`5,300,1800,7200,18000,36000,36000`")
    webhook_disable_after: float = setting(
        "RECEIVER_WEBHOOK_DISABLE_AFTER", 432000.0, "a subscription whose every delivery attempt has failed for "
        "this long is `disabled`", kind="duration", default_doc="`5d`")
    webhook_allow_private: bool = setting(
        "RECEIVER_WEBHOOK_ALLOW_PRIVATE", False, "let webhook URLs use `http` and reach loopback, private, "
        "link-local and metadata addresses (tests, the demo, a subscriber inside your own network)")
    webhook_workers: int = setting("RECEIVER_WEBHOOK_WORKERS", 8, "webhook delivery threads per process (apart "
                                   "from the event workers, so a slow subscriber never delays events)", minimum=1)
    message_retention_days: float = setting("RECEIVER_MESSAGE_RETENTION_DAYS", 7.0, "push messages, and "
                                            "deliveries no longer pending, are deleted after this many days "
                                            "(0 = keep); replay reaches back this far")
    original_mode: str = setting("RECEIVER_ORIGINAL_MODE", "redirect", "`GET /v1/snapshots/<id>/original` "
                                 "answers a redirect to OSS, or the bytes", choices=("redirect", "stream"))

    def __post_init__(self) -> None:
        # Derived defaults depend on data_dir, so fill them here rather than at definition time.
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{self.data_dir / 'receiver.db'}")
        if not self.thumbnail_store:
            object.__setattr__(self, "thumbnail_store", f"file://{(self.data_dir / 'thumbnails').resolve()}")
        for f in fields(self):
            var, value = env_var(f), getattr(self, f.name)
            if var.choices and value not in var.choices:
                raise ConfigError(f"{var.name} must be {' or '.join(var.choices)}, got {value!r}")
        if not self.thumbnail_widths or any(w < 8 or w > 4096 for w in self.thumbnail_widths):
            raise ConfigError("RECEIVER_THUMBNAIL_WIDTHS must be a list of widths between 8 and 4096")
        try:
            parse_retention(self.retention)
        except RetentionError as e:
            raise ConfigError(str(e)) from None
        # Past this, "now minus the age" is no date (every prune would fail); NaN would never prune.
        if not 0 <= self.retention_days <= MAX_AGE_MS / DAY_MS:
            raise ConfigError(f"RECEIVER_RETENTION_DAYS must be between 0 (keep all) and {MAX_AGE_MS // DAY_MS}, "
                              f"got {self.retention_days!r}")
        if self.queue == "celery" and not self.broker_url:
            raise ConfigError("RECEIVER_QUEUE=celery needs RECEIVER_BROKER_URL")

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def url_signing_secret(self) -> str | None:
        # Signed thumbnail URLs only matter when API keys gate /v1; fall back to the first key.
        return self.url_signing_key or (self.api_keys[0] if self.api_keys else None)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        kw: dict[str, Any] = {}
        for f in fields(cls):
            var = env_var(f)
            value = env.get(var.name)
            if value:  # an empty variable counts as unset, as shells and compose files leave them
                kw[f.name] = var.parse(value)
        return cls(**kw)


SETTING_NAMES = tuple(f.name for f in fields(Settings))


def _default_label(f: Field[Any]) -> str:
    var = env_var(f)
    if var.default_doc is not None:
        return var.default_doc
    value = f.default
    if value is MISSING:
        raise TypeError(f"{f.name}: a computed default needs default_doc")
    if value is None:
        return "unset"
    if value == "" or value == ():
        return "empty"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float):
        return f"`{value:g}`"
    if isinstance(value, tuple):
        return f"`{','.join(map(str, value))}`"
    return f"`{value}`"


def configuration_table() -> str:
    """The markdown table of every variable, as docs/configuration.md carries it."""
    rows = ["| Variable | Type | Default | Description |", "|---|---|---|---|"]
    for f in fields(Settings):
        var = env_var(f)
        rows.append(f"| `{var.name}` | {var.type_label} | {_default_label(f)} | {var.doc} |")
    return "\n".join(rows) + "\n"
