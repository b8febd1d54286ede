"""Access control for /v1 (API keys, signed URLs) and CORS for browser frontends.

- With ``RECEIVER_API_KEYS`` set, every /v1 request needs ``Authorization: Bearer <key>`` (401 otherwise),
  or, for GET/HEAD, a valid ``exp``+``sig`` pair signed for exactly its path (what thumbnail URLs carry).
  A signature that is present but wrong or expired answers 403: the URL itself is bad, and retrying with
  the same URL will not help; a client refreshes the JSON that handed it out.
- ``RECEIVER_CORS_ORIGINS``: origins allowed to call /v1 and /openapi.json from a browser (``*`` = any).
  Preflights are answered here, before authentication, since browsers never send credentials on them.
"""

from __future__ import annotations

import hmac

from flask import Flask, Response, request

from receiver.config import Settings
from receiver.services import current_services
from receiver.web.errors import ApiError
from receiver.web.urlsign import check

CORS_PATHS = ("/v1/", "/openapi.json")
CORS_ALLOW_HEADERS = "Authorization, Content-Type, If-None-Match"
CORS_EXPOSE_HEADERS = "ETag, Cache-Control, Content-Length"
CORS_MAX_AGE = "600"


def _settings() -> Settings:
    settings: Settings = current_services().settings
    return settings


def key_matches(presented: str, keys: tuple[str, ...]) -> bool:
    """Constant time in the presented key and independent of which configured key (if any) matched."""
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(presented.encode(), key.encode())
    return ok


def _unauthorized(message: str, error: str | None = None) -> ApiError:
    challenge = 'Bearer realm="receiver"' + (f', error="{error}"' if error else "")
    return ApiError(401, "Unauthorized", message, {"WWW-Authenticate": challenge})


def _check_access() -> None:
    settings = _settings()
    if not settings.api_keys or not request.path.startswith("/v1/") or request.method == "OPTIONS":
        return
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, presented = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise _unauthorized("Authorization must be `Bearer <key>`", "invalid_request")
        if not key_matches(presented.strip(), settings.api_keys):
            raise _unauthorized("unknown API key", "invalid_token")
        return
    if "sig" in request.args or "exp" in request.args:
        secret = settings.url_signing_secret
        problem = "InvalidSignature" if request.method not in ("GET", "HEAD") or not secret else check(
            secret, request.path, request.args.get("exp"), request.args.get("sig"))
        if problem is not None:
            what = "has expired" if problem == "ExpiredSignature" else "does not match this URL"
            raise ApiError(403, problem, f"the URL signature {what}; fetch a fresh URL")
        return
    raise _unauthorized("this API needs `Authorization: Bearer <key>`")


def _allowed_origin(settings: Settings, origin: str | None) -> str | None:
    if not origin or not settings.cors_origins:
        return None
    if "*" in settings.cors_origins:
        return "*"
    return origin if origin in settings.cors_origins else None


def _is_cors_path() -> bool:
    return any(request.path.startswith(p) for p in CORS_PATHS)


def _preflight() -> Response | None:
    if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
        return None
    if not _is_cors_path() or not _settings().cors_origins:
        return None
    # Answered whatever the origin; without Access-Control-Allow-Origin (added below) the browser refuses.
    resp = Response(status=204)
    if _allowed_origin(_settings(), request.headers.get("Origin")):
        resp.headers["Access-Control-Allow-Methods"] = "GET, HEAD, POST, DELETE, OPTIONS"
        resp.headers["Access-Control-Allow-Headers"] = CORS_ALLOW_HEADERS
        resp.headers["Access-Control-Max-Age"] = CORS_MAX_AGE
    return resp


def _cors_headers(resp: Response) -> Response:
    settings = _settings()
    if not settings.cors_origins or not _is_cors_path():
        return resp
    allowed = _allowed_origin(settings, request.headers.get("Origin"))
    if allowed != "*":
        resp.vary.add("Origin")
    if allowed:
        resp.headers["Access-Control-Allow-Origin"] = allowed
        resp.headers["Access-Control-Expose-Headers"] = CORS_EXPOSE_HEADERS
    return resp


def init_app(app: Flask) -> None:
    app.before_request(_preflight)
    app.before_request(_check_access)
    app.after_request(_cors_headers)
