"""Expiring HMAC signatures on thumbnail URLs, so <img src> works when /v1 needs an API key."""

from __future__ import annotations

import hashlib
import hmac
import time

URL_TTL_SECONDS = 3600


def _sig(key: str, path: str, exp: int) -> str:
    return hmac.new(key.encode(), f"{path}|{exp}".encode(), hashlib.sha256).hexdigest()[:32]


def thumbnail_url(snapshot_id: int, width: int, signing_key: str | None, now: float | None = None) -> str:
    path = f"/v1/snapshots/{snapshot_id}/thumbnail"
    url = f"{path}?width={width}"
    if signing_key:
        # Round the expiry to the hour so repeated listings give the same URL (browser caches keep working).
        t = int(now if now is not None else time.time())
        exp = (t // URL_TTL_SECONDS + 2) * URL_TTL_SECONDS
        url += f"&exp={exp}&sig={_sig(signing_key, path, exp)}"
    return url


def verify(signing_key: str, path: str, exp: str | None, sig: str | None, now: float | None = None) -> bool:
    if not exp or not sig or not exp.isdigit():
        return False
    if int(exp) < (now if now is not None else time.time()):
        return False
    return hmac.compare_digest(_sig(signing_key, path, int(exp)), sig)
