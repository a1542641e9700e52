"""API keys at the door: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.

A request without a valid key gets 401 ``unauthorized`` with ``WWW-Authenticate`` before any
route runs. The key's *name* goes into ``request.state.api_key_name`` (the prediction log and
the rate limiter read it); the secret itself is never stored, logged or echoed.
"""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Receive, Scope, Send

from ..apikeys import KeyRing, presented_secret
from .errors import error_response
from .public import is_ops, is_page

log = logging.getLogger("modelhost.auth")
_CHALLENGE = 'Bearer realm="modelhost"'
_KEY_HEADERS = (b"authorization", b"x-api-key")  # only these are decoded


class ApiKeys:
    """401 for requests without a valid key; a pass-through when ``keys`` is None."""

    def __init__(self, app: ASGIApp, keys: KeyRing | None, protect_ops: bool = False) -> None:
        self.app = app
        self.keys = keys
        self.protect_ops = protect_ops

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.keys is None or self._open(scope):
            return await self.app(scope, receive, send)
        secret = presented_key(scope)
        name = self.keys.verify(secret) if secret else None
        if name is None:
            state = scope.setdefault("state", {})
            client = (scope.get("client") or ("", 0))[0]
            log.warning("unauthorized request", extra={"fields": {
                "request_id": state.get("request_id", ""), "client": client,
                "reason": "invalid key" if secret else "no key"}})
            message = ("the API key is not valid" if secret else
                       "an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key'")
            response = error_response(state.get("request_id", ""), 401, "unauthorized", message)
            response.headers["WWW-Authenticate"] = _CHALLENGE
            return await response(scope, receive, send)
        scope.setdefault("state", {})["api_key_name"] = name
        await self.app(scope, receive, send)

    def _open(self, scope: Scope) -> bool:
        path = scope["path"]
        return is_page(scope["method"], path) or (is_ops(path) and not self.protect_ops)


def presented_key(scope: Scope) -> str | None:
    """The secret from the request's ``Authorization: Bearer`` or ``X-API-Key`` header."""
    return presented_secret((name.decode("latin-1"), value.decode("latin-1"))
                            for name, value in scope.get("headers", []) if name in _KEY_HEADERS)
