"""API keys at the door: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.

A request without a valid key gets 401 ``unauthorized`` with ``WWW-Authenticate`` before any
route runs (the gate, gate.py, asks :class:`KeyPolicy`). The key's *name* goes into
``request.state.api_key_name`` (the prediction log and the rate limiter read it); the secret
itself is never stored, logged or echoed.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..access.keys import KeyRing, presented_secret
from ..errors import Unauthorized
from .public import is_ops, is_page

if TYPE_CHECKING:
    from .gate import Head

log = logging.getLogger("modelhost.auth")
_CHALLENGE = 'Bearer realm="modelhost"'
_KEY_HEADERS = ("authorization", "x-api-key")


class KeyPolicy:
    """401 for requests without a valid key; lets everything pass when ``keys`` is None."""

    def __init__(self, keys: KeyRing | None, protect_ops: bool = False) -> None:
        self.keys = keys
        self.protect_ops = protect_ops

    def check(self, head: Head, request_id: str) -> str | None:
        """The valid key's name (None when keys are off or the path is open)."""
        if self.keys is None or self._open(head):
            return None
        secret = presented_secret((name, head.headers[name]) for name in _KEY_HEADERS
                                  if name in head.headers)
        name = self.keys.verify(secret) if secret else None
        if name is None:
            log.warning("unauthorized request", extra={"fields": {
                "request_id": request_id, "client": head.client,
                "reason": "invalid key" if secret else "no key"}})
            raise Unauthorized(
                "the API key is not valid" if secret else
                "an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key'",
                headers={"WWW-Authenticate": _CHALLENGE})
        return name

    def _open(self, head: Head) -> bool:
        return is_page(head.method, head.path) or (is_ops(head.path) and not self.protect_ops)
