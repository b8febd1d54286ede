"""Expiring HMAC signatures on URLs, so <img src> works when /v1 needs an API key.

A signature covers the path and the expiry, not the query: a signed thumbnail URL grants every width of
that one snapshot, which is the same access. Any module that hands out URLs to browser-loaded resources
(thumbnails, sprites, originals) signs them with ``sign_path`` and the auth check accepts them for GET.
"""

from __future__ import annotations

import hashlib
import hmac
import time

URL_TTL_SECONDS = 3600


def _sig(key: str, path: str, exp: int) -> str:
    return hmac.new(key.encode(), f"{path}|{exp}".encode(), hashlib.sha256).hexdigest()[:32]


def sign_path(path: str, signing_key: str, now: float | None = None) -> str:
    """``exp=…&sig=…`` for ``path``. The expiry is rounded to the hour (valid 1-2 h) so repeated listings
    give the same URL and browser caches keep working."""
    t = int(now if now is not None else time.time())
    exp = (t // URL_TTL_SECONDS + 2) * URL_TTL_SECONDS
    return f"exp={exp}&sig={_sig(signing_key, path, exp)}"


def sign_path_for(path: str, signing_key: str, ttl: int, now: float | None = None) -> str:
    """``exp=…&sig=…`` for ``path``, valid for ``ttl`` seconds exactly (a short-lived URL, e.g. the live stream's,
    which a browser uses once to connect and then asks for again)."""
    exp = int(now if now is not None else time.time()) + ttl
    return f"exp={exp}&sig={_sig(signing_key, path, exp)}"


def signed_url(path: str, query: str, signing_key: str | None, now: float | None = None) -> str:
    """``path?query``, plus the signature when a key is given."""
    url = f"{path}?{query}" if query else path
    if signing_key:
        url += ("&" if query else "?") + sign_path(path, signing_key, now)
    return url


def thumbnail_url(snapshot_id: int, width: int, signing_key: str | None, now: float | None = None) -> str:
    return signed_url(f"/v1/snapshots/{snapshot_id}/thumbnail", f"width={width}", signing_key, now)


def check(signing_key: str, path: str, exp: str | None, sig: str | None, now: float | None = None) -> str | None:
    """None when valid, else why not: ``InvalidSignature`` or ``ExpiredSignature``."""
    if not exp or not sig or not (exp.isascii() and exp.isdigit()) or len(exp) > 12:
        return "InvalidSignature"
    if not hmac.compare_digest(_sig(signing_key, path, int(exp)), sig):
        return "InvalidSignature"
    if int(exp) < (now if now is not None else time.time()):
        return "ExpiredSignature"
    return None


def verify(signing_key: str, path: str, exp: str | None, sig: str | None, now: float | None = None) -> bool:
    return check(signing_key, path, exp, sig, now) is None
