"""The one place that owns the JSON error format: {"error": {"code": ..., "message": ...}}."""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Flask, Response, request
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


class ApiError(Exception):
    """Raised by views for any 4xx/5xx; rendered by the handler below."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def error_body(code: str, message: str) -> bytes:
    """The encoded error document (what Flask's jsonify would write: compact, ASCII, newline-terminated)."""
    return (json.dumps({"error": {"code": code, "message": message}}, separators=(",", ":")) + "\n").encode()


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    resp = Response(error_body(code, message), status=status, mimetype="application/json")
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


def as_api_error(e: Exception) -> ApiError:
    """What any exception raised while answering a request becomes (logged here, as it is decided).

    Used by the Flask handlers below and by the callback's WSGI route, which answers without Flask.
    """
    if isinstance(e, ApiError):
        return e
    if isinstance(e, OperationalError | PoolTimeout) or (isinstance(e, DBAPIError) and e.connection_invalidated):
        log.warning("database unavailable: %s", e)
        # 503 makes ICE (and any sane client) retry; the event is not lost.
        return ApiError(503, "DatabaseUnavailable", "the database is unavailable, retry later", {"Retry-After": "1"})
    if isinstance(e, DBAPIError):
        log.exception("database error")
    else:
        log.exception("unhandled error")
    return ApiError(500, "InternalError", "internal error")


_HTTP_CODES = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
    429: "TooManyRequests",
}


def _refuse_nul() -> Response | None:
    # PostgreSQL cannot hold NUL in text: a %00 in a path or query value would reach it as a 500.
    if "\x00" in request.path or any("\x00" in v for v in request.args.values()):
        return error_response(400, "InvalidParameter", "NUL characters are not allowed in paths or parameters")
    return None


def register_error_handlers(app: Flask) -> None:
    app.before_request(_refuse_nul)
    @app.errorhandler(ApiError)
    def _api_error(e: ApiError) -> Response:
        return error_response(e.status, e.code, e.message, e.headers)

    @app.errorhandler(HTTPException)
    def _http_error(e: HTTPException) -> Any:
        status = e.code or 500
        if status < 400:
            return e
        headers = {}
        if status == 405 and e.get_response().headers.get("Allow"):
            headers["Allow"] = e.get_response().headers["Allow"]
        return error_response(status, _HTTP_CODES.get(status, "HTTPError"), e.description or e.name, headers)

    @app.errorhandler(Exception)
    def _internal(e: Exception) -> Response:
        err = as_api_error(e)
        return error_response(err.status, err.code, err.message, err.headers)
