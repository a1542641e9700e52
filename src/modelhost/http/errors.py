"""The one error boundary: every failure on the HTTP side becomes a response here.

Two dialects, chosen by route in :func:`dialect_of` and nowhere else:

- **native** (``/api``, pages, ops): ``{"error": {"code", "message", "request_id"}}`` with the
  status of the contract in DESIGN.md;
- **protocol** (``/v2``, ``/v1/models``): ``{"error": "<message>"}``, the body KServe V2 and TF
  Serving clients expect, with 415/422 folded into 400 (PROTOCOLS.md); the native code still
  travels in ``X-Error-Code``.

Both carry ``Retry-After`` on 429 and 503 (computed once, in :func:`retry_after`). The route
handlers, the policy gate, the body limit and the connection guard all render through
:func:`render`, so the same failure reads the same whether it was found before the body was
read or while it streamed. Unexpected exceptions become a bare 500 ``internal_error``: the
traceback goes to the log, never to the client.
"""

from __future__ import annotations

import logging
import math
from enum import Enum

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from ..errors import (
    InternalError,
    InvalidInput,
    MalformedRequest,
    MethodNotAllowed,
    ModelhostError,
    NotFound,
    TooLarge,
    UnsupportedMedia,
)
from .responses import JSON

log = logging.getLogger("modelhost.http")

_PROTOCOL_PREFIXES = ("/v2/", "/v1/models")
_AS_BAD_REQUEST = frozenset({415, 422})
_FROM_HTTP: dict[int, type[ModelhostError]] = {
    404: NotFound, 405: MethodNotAllowed, 413: TooLarge, 415: UnsupportedMedia,
}


class Dialect(Enum):
    NATIVE = "native"
    PROTOCOL = "protocol"


def dialect_of(path: str) -> Dialect:
    """The error dialect of a route: the standard protocols' own, or modelhost's."""
    if path == "/v2" or path.startswith(_PROTOCOL_PREFIXES):
        return Dialect.PROTOCOL
    return Dialect.NATIVE


def retry_after(exc: ModelhostError) -> str | None:
    """Whole seconds for ``Retry-After``; always present on 429 and 503."""
    if exc.retry_after is None and exc.status not in (429, 503):
        return None
    return str(max(1, math.ceil(exc.retry_after or 1)))


def render(exc: ModelhostError, path: str, request_id: str) -> JSON:
    """``exc`` as the response of the route at ``path``."""
    wait = retry_after(exc)
    headers = {**exc.headers, "Retry-After": wait} if wait else dict(exc.headers)
    if dialect_of(path) is Dialect.PROTOCOL:
        status = 400 if exc.status in _AS_BAD_REQUEST else exc.status
        return JSON({"error": exc.message}, status_code=status,
                    headers={**headers, "X-Error-Code": exc.code})
    body = {"error": {"code": exc.code, "message": exc.message, "request_id": request_id}}
    return JSON(body, status_code=exc.status, headers=headers)


def request_id_of(request: Request) -> str:
    return getattr(request.state, "request_id", "") or ""


def from_validation(exc: RequestValidationError) -> ModelhostError:
    """FastAPI's parameter validation failure as a contract error."""
    first = exc.errors()[0] if exc.errors() else {}
    if first.get("type") == "json_invalid":
        return MalformedRequest("the body is not valid JSON")
    where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "path"))
    return InvalidInput(f"{where}: {first.get('msg', 'invalid value')}" if where
                        else "invalid request")


def from_http(exc: HTTPException) -> ModelhostError:
    """Starlette's routing and parsing failures (no route, wrong method) as contract errors."""
    kind = _FROM_HTTP.get(exc.status_code, MalformedRequest)
    if kind is NotFound:
        return NotFound("not found")
    message = exc.detail if isinstance(exc.detail, str) else "bad request"
    return kind(message)


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``: each turns its exception into :func:`render`."""

    def respond(request: Request, exc: ModelhostError) -> JSON:
        return render(exc, request.url.path, request_id_of(request))

    @app.exception_handler(ModelhostError)
    async def _modelhost(request: Request, exc: ModelhostError) -> JSON:
        return respond(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSON:
        return respond(request, from_validation(exc))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSON:
        return respond(request, from_http(exc))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSON:
        log.error("unexpected error", exc_info=exc,
                  extra={"fields": {"request_id": request_id_of(request)}})
        return respond(request, InternalError("the server failed to handle this request"))
