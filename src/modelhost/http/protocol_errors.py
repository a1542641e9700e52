"""Errors on the standard-protocol routes (V2, TF Serving): ``{"error": "<message>"}``.

Their clients expect that body, not modelhost's native ``{"error": {"code", ...}}``, and a 400
for any bad input (PROTOCOLS.md); so the same :class:`ModelhostError` is rendered here with
422/415 folded into 400. The native code still travels in the ``X-Error-Code`` header, and 429
and 503 keep their ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.responses import Response

from ..errors import InvalidInput, ModelhostError, RequestTimeout
from .responses import JSON

_AS_BAD_REQUEST = {415, 422}


def protocol_error(exc: ModelhostError) -> JSON:
    """The protocol body and status for ``exc``."""
    status = 400 if exc.status in _AS_BAD_REQUEST else exc.status
    headers = {"X-Error-Code": exc.code}
    if exc.retry_after is not None or status in (429, 503):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after or 1)))
    return JSON({"error": exc.message}, status_code=status, headers=headers)


class ProtocolRoute(APIRoute):
    """A route whose failures are rendered with :func:`protocol_error`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except ModelhostError as exc:
                return protocol_error(exc)
            except RequestValidationError as exc:
                first = exc.errors()[0] if exc.errors() else {}
                message = f"{'.'.join(map(str, first.get('loc', ())))}: {first.get('msg')}"
                return protocol_error(InvalidInput(message))
            except HTTPException as exc:
                return JSON({"error": str(exc.detail)}, status_code=exc.status_code)

        return handle


async def read_body(request: Request, deadline: float) -> bytes:
    """The whole body, within the deadline (408 for a client too slow to send it)."""
    try:
        async with asyncio.timeout_at(deadline):
            return await request.body()
    except TimeoutError:
        raise RequestTimeout("the request body did not arrive in time") from None
