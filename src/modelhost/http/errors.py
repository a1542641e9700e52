"""The one mapping from errors to HTTP responses (the contract in DESIGN.md).

Bodies are ``{"error": {"code", "message", "request_id"}}``; 503 and 429 always carry
``Retry-After``. Unexpected exceptions become a bare 500 ``internal_error``: the traceback goes
to the log, never to the client.
"""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from ..errors import ModelhostError
from .responses import JSON

log = logging.getLogger("modelhost.http")

_HTTP_CODES = {
    400: "malformed_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}


# Clients of these protocols expect {"error": "<message>"} (PROTOCOLS.md); their routes render
# it themselves (protocol_errors.py), this covers requests that matched no route there.
_PROTOCOL_PREFIXES = ("/v2/", "/v1/models")


def request_id_of(request: Request) -> str:
    return getattr(request.state, "request_id", "") or ""


def error_response(request_id: str, status: int, code: str, message: str,
                   retry_after: float | None = None) -> JSON:
    headers = {}
    if retry_after is not None or status in (429, 503):
        headers["Retry-After"] = str(max(1, math.ceil(retry_after or 1)))
    body = {"error": {"code": code, "message": message, "request_id": request_id}}
    return JSON(body, status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""

    @app.exception_handler(ModelhostError)
    async def _modelhost(request: Request, exc: ModelhostError) -> JSON:
        return error_response(request_id_of(request), exc.status, exc.code, exc.message,
                              exc.retry_after)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSON:
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":
            return error_response(request_id_of(request), 400, "malformed_request",
                                  "the body is not valid JSON")
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "path"))
        message = f"{where}: {first.get('msg', 'invalid value')}" if where else "invalid request"
        return error_response(request_id_of(request), 422, "invalid_parameter", message)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSON:
        code = _HTTP_CODES.get(exc.status_code, "malformed_request")
        message = exc.detail if isinstance(exc.detail, str) and exc.status_code != 404 else (
            "not found" if exc.status_code == 404 else "bad request")
        path = request.url.path
        if path == "/v2" or path.startswith(_PROTOCOL_PREFIXES):  # no route matched there
            return JSON({"error": message}, status_code=exc.status_code,
                        headers={"X-Error-Code": code})
        return error_response(request_id_of(request), exc.status_code, code, message)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSON:
        log.error("unexpected error", exc_info=exc,
                  extra={"fields": {"request_id": request_id_of(request)}})
        return error_response(request_id_of(request), 500, "internal_error",
                              "the server failed to handle this request")
