"""Settings, read from the environment once, with explicit coercion (product.md section 5)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any


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


def _endpoint_map(name: str, value: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in _csv(value):
        host, sep, url = item.partition("=")
        if not sep or not host.strip() or not url.strip():
            raise ConfigError(f"{name} items must be host=url, got {item!r}")
        out[host.strip().lower()] = url.strip()
    return out


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("./var")
    database_url: str = ""
    thumbnail_store: str = ""
    thumbnail_widths: tuple[int, ...] = (320, 160)
    thumbnail_format: str = "jpeg"
    thumbnail_quality: int = 80
    ice_endpoint: str = "ice.cn-shanghai.aliyuncs.com"
    ice_region: str = "cn-shanghai"
    access_key_id: str | None = None
    access_key_secret: str | None = None
    security_token: str | None = None
    oss_endpoint_map: dict[str, str] = field(default_factory=dict)
    oss_allowed_endpoints: tuple[str, ...] = ("*.aliyuncs.com",)
    max_image_bytes: int = 20_000_000
    max_image_pixels: int = 40_000_000
    callback_token: str | None = None
    callback_auth_keys: tuple[str, ...] = ()
    callback_max_skew: int = 300
    public_url: str | None = None
    max_callback_bytes: int = 65536
    job_cache_seconds: float = 60.0
    job_negative_cache_seconds: float = 60.0
    reconcile_seconds: float = 60.0
    reconcile_lookback_days: float = 1.0
    discover_jobs: bool = False
    retention_days: float = 0.0
    queue: str = "thread"
    worker_pool: str = "thread"  # thread | process: how in-process workers run (RECEIVER_WORKER_POOL)
    broker_url: str | None = None
    workers: int = field(default_factory=lambda: os.cpu_count() or 2)
    api_keys: tuple[str, ...] = ()
    url_signing_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    max_attempts: int = 8
    retry_base_seconds: float = 1.0
    retry_max_seconds: float = 300.0
    lease_seconds: float = 120.0
    sweep_seconds: float = 5.0
    ice_timeout_ms: int = 5000
    oss_timeout_seconds: float = 10.0
    log_level: str = "INFO"
    web_threads: int = 16  # waitress threads of `serve` (RECEIVER_WEB_THREADS; gunicorn.conf.py reads its own)
    # Stream health (issue 7; README "Stream health"): multiples of the job's interval, hash bits, luma 0-255.
    health_gap_factor: float = 1.5
    health_stale_factor: float = 4.0
    health_frozen_hamming: int = 3
    health_frozen_min_frames: int = 6
    health_black_luma: float = 20.0
    health_black_spread: float = 10.0
    original_mode: str = "redirect"  # redirect | stream (GET /v1/snapshots/<id>/original)

    def __post_init__(self) -> None:
        # Derived defaults depend on data_dir, so fill them here rather than at definition time.
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{self.data_dir / 'receiver.db'}")
        if not self.thumbnail_store:
            object.__setattr__(self, "thumbnail_store", f"file://{(self.data_dir / 'thumbnails').resolve()}")
        if self.thumbnail_format not in {"jpeg", "webp"}:
            raise ConfigError(f"RECEIVER_THUMBNAIL_FORMAT must be jpeg or webp, got {self.thumbnail_format!r}")
        if not self.thumbnail_widths or any(w < 8 or w > 4096 for w in self.thumbnail_widths):
            raise ConfigError("RECEIVER_THUMBNAIL_WIDTHS must be a list of widths between 8 and 4096")
        if self.worker_pool not in {"thread", "process"}:
            raise ConfigError(f"RECEIVER_WORKER_POOL must be thread or process, got {self.worker_pool!r}")
        if self.queue not in {"thread", "celery"}:
            raise ConfigError(f"RECEIVER_QUEUE must be thread or celery, got {self.queue!r}")
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

        def get(name: str) -> str | None:
            v = env.get(name)
            return v if v is not None and v != "" else None

        if (v := get("RECEIVER_DATA_DIR")) is not None:
            kw["data_dir"] = Path(v)
        simple = {
            "RECEIVER_DATABASE_URL": "database_url",
            "RECEIVER_THUMBNAIL_STORE": "thumbnail_store",
            "RECEIVER_THUMBNAIL_FORMAT": "thumbnail_format",
            "RECEIVER_ICE_ENDPOINT": "ice_endpoint",
            "RECEIVER_ICE_REGION": "ice_region",
            "ALIBABA_CLOUD_ACCESS_KEY_ID": "access_key_id",
            "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "access_key_secret",
            "ALIBABA_CLOUD_SECURITY_TOKEN": "security_token",
            "RECEIVER_CALLBACK_TOKEN": "callback_token",
            "RECEIVER_PUBLIC_URL": "public_url",
            "RECEIVER_QUEUE": "queue",
            "RECEIVER_WORKER_POOL": "worker_pool",
            "RECEIVER_BROKER_URL": "broker_url",
            "RECEIVER_URL_SIGNING_KEY": "url_signing_key",
            "RECEIVER_LOG_LEVEL": "log_level",
        }
        for var, attr in simple.items():
            if (v := get(var)) is not None:
                kw[attr] = v.strip().lower() if attr in {"thumbnail_format", "queue", "worker_pool"} else v
        ints = {
            "RECEIVER_MAX_IMAGE_BYTES": ("max_image_bytes", 1),
            "RECEIVER_MAX_IMAGE_PIXELS": ("max_image_pixels", 1),
            "RECEIVER_CALLBACK_MAX_SKEW": ("callback_max_skew", 0),
            "RECEIVER_MAX_CALLBACK_BYTES": ("max_callback_bytes", 1),
            "RECEIVER_WORKERS": ("workers", 0),
            "RECEIVER_MAX_ATTEMPTS": ("max_attempts", 1),
            "RECEIVER_THUMBNAIL_QUALITY": ("thumbnail_quality", 1),
            "RECEIVER_WEB_THREADS": ("web_threads", 1),
        }
        for var, (attr, minimum) in ints.items():
            if (v := get(var)) is not None:
                kw[attr] = _int(var, v, minimum)
        floats = {
            "RECEIVER_JOB_CACHE_SECONDS": "job_cache_seconds",
            "RECEIVER_RECONCILE_SECONDS": "reconcile_seconds",
            "RECEIVER_RECONCILE_LOOKBACK_DAYS": "reconcile_lookback_days",
            "RECEIVER_RETENTION_DAYS": "retention_days",
            "RECEIVER_RETRY_BASE_SECONDS": "retry_base_seconds",
            "RECEIVER_LEASE_SECONDS": "lease_seconds",
            "RECEIVER_SWEEP_SECONDS": "sweep_seconds",
        }
        for var, attr in floats.items():
            if (v := get(var)) is not None:
                kw[attr] = _float(var, v)
        if (v := get("RECEIVER_DISCOVER_JOBS")) is not None:
            kw["discover_jobs"] = _bool("RECEIVER_DISCOVER_JOBS", v)
        if (v := get("RECEIVER_THUMBNAIL_WIDTHS")) is not None:
            kw["thumbnail_widths"] = tuple(_int("RECEIVER_THUMBNAIL_WIDTHS", w) for w in _csv(v))
        if (v := get("RECEIVER_OSS_ENDPOINT_MAP")) is not None:
            kw["oss_endpoint_map"] = _endpoint_map("RECEIVER_OSS_ENDPOINT_MAP", v)
        if (v := get("RECEIVER_OSS_ALLOWED_ENDPOINTS")) is not None:
            kw["oss_allowed_endpoints"] = tuple(p.lower() for p in _csv(v))
        for var, attr in {
            "RECEIVER_CALLBACK_AUTH_KEYS": "callback_auth_keys",
            "RECEIVER_API_KEYS": "api_keys",
            "RECEIVER_CORS_ORIGINS": "cors_origins",
        }.items():
            if (v := get(var)) is not None:
                kw[attr] = _csv(v)
        for var, attr in {
            "RECEIVER_HEALTH_GAP_FACTOR": "health_gap_factor",
            "RECEIVER_HEALTH_STALE_FACTOR": "health_stale_factor",
            "RECEIVER_HEALTH_BLACK_LUMA": "health_black_luma",
            "RECEIVER_HEALTH_BLACK_SPREAD": "health_black_spread",
        }.items():
            if (v := get(var)) is not None:
                kw[attr] = _float(var, v)
        if (v := get("RECEIVER_HEALTH_FROZEN_HAMMING")) is not None:
            kw["health_frozen_hamming"] = _int("RECEIVER_HEALTH_FROZEN_HAMMING", v, 0)
        if (v := get("RECEIVER_HEALTH_FROZEN_MIN_FRAMES")) is not None:
            kw["health_frozen_min_frames"] = _int("RECEIVER_HEALTH_FROZEN_MIN_FRAMES", v, 2)
        if (v := get("RECEIVER_ORIGINAL_MODE")) is not None:
            if v.strip().lower() not in {"redirect", "stream"}:
                raise ConfigError(f"RECEIVER_ORIGINAL_MODE must be redirect or stream, got {v!r}")
            kw["original_mode"] = v.strip().lower()
        return cls(**kw)


SETTING_NAMES = tuple(f.name for f in fields(Settings))
