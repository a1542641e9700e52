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
from typing import TYPE_CHECKING

from ..errors import Forbidden

if TYPE_CHECKING:
    from .gate import Head

log = logging.getLogger("modelhost.http")
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_SAME = frozenset({"same-origin", "none"})


class CrossSitePolicy:
    """403 ``forbidden`` for cross-site browser requests with unsafe methods."""

    def __init__(self, allowed_origins: str = "") -> None:
        self.allowed = frozenset(o.strip().rstrip("/").lower()
                                 for o in allowed_origins.split(",") if o.strip())

    def check(self, head: Head, request_id: str) -> None:
        if head.method in _SAFE_METHODS or self._allowed(head):
            return
        log.warning("cross-site request refused", extra={"fields": {
            "request_id": request_id, "path": head.path, "method": head.method}})
        raise Forbidden("cross-site requests are not accepted")

    def _allowed(self, head: Head) -> bool:
        site, origin = head.headers.get("sec-fetch-site"), head.headers.get("origin")
        if origin is not None:
            origin = origin.strip().rstrip("/").lower()
            return origin in self.allowed or origin == _own_origin(head)
        return site is None or site in _SAME


def _own_origin(head: Head) -> str | None:
    host = head.headers.get("host")
    if not host:
        return None
    return f"{head.scheme}://{host.strip().lower()}"
