"""Cross-site request refusal (CSRF) for state-changing methods, by origin, without tokens.

A browser on another site can make a visitor's browser POST a form or a no-cors ``fetch`` to
this server (a server on localhost or an intranet is reachable that way even with no cookies),
spending its model time or writing feedback. Browsers say where such a request comes from:
``Sec-Fetch-Site`` (all current browsers) and ``Origin`` (on every cross-origin POST). So:

- ``Sec-Fetch-Site: same-origin`` or ``none`` (typed by the user) → allowed;
- any other ``Sec-Fetch-Site``, or an ``Origin`` that is neither this server's own origin nor one
  listed with ``--allowed-origins`` (``null`` included) → 403 ``forbidden``;
- neither header → allowed: that is curl, the Python client or another server, which a web
  page cannot impersonate, and which API keys govern.

GET, HEAD and OPTIONS change nothing and pass.
"""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import error_response

log = logging.getLogger("modelhost.http")
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_SAME = frozenset({"same-origin", "none"})


class SameOrigin:
    """403 ``forbidden`` for cross-site browser requests with unsafe methods."""

    def __init__(self, app: ASGIApp, allowed_origins: str = "") -> None:
        self.app = app
        self.allowed = frozenset(o.strip().rstrip("/").lower()
                                 for o in allowed_origins.split(",") if o.strip())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in _SAFE_METHODS or self._allowed(scope):
            return await self.app(scope, receive, send)
        request_id = scope.get("state", {}).get("request_id", "")
        log.warning("cross-site request refused", extra={"fields": {
            "request_id": request_id, "path": scope["path"], "method": scope["method"]}})
        response = error_response(request_id, 403, "forbidden",
                                  "cross-site requests are not accepted")
        await response(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        headers = _headers(scope)
        site, origin = headers.get("sec-fetch-site"), headers.get("origin")
        if origin is not None:
            origin = origin.strip().rstrip("/").lower()
            return origin in self.allowed or origin == _own_origin(scope, headers.get("host"))
        return site is None or site in _SAME


def _headers(scope: Scope) -> dict[str, str]:
    wanted = (b"origin", b"sec-fetch-site", b"host")
    return {k.decode(): v.decode("latin-1") for k, v in scope.get("headers", []) if k in wanted}


def _own_origin(scope: Scope, host: str | None) -> str | None:
    if not host:
        return None
    return f"{scope.get('scheme', 'http')}://{host.strip().lower()}"
