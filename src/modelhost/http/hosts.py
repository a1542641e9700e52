"""The ``Host`` header check that stops DNS rebinding.

A page on ``evil.example`` can make its own name resolve to 127.0.0.1; the visitor's browser
then treats modelhost on localhost as *same-origin* with the attacker's page, sends it requests
and lets the page read the answers — the cross-site check cannot see it. What gives it away is
the ``Host`` header, which still says ``evil.example``. So a server bound to a loopback address
answers only to loopback names unless told otherwise (``--allowed-hosts``); a server bound to
any other address accepts any name (it is reachable by many names: pod IPs, service names), or
the list given.
"""

from __future__ import annotations

import ipaddress

from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import error_response

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_names(bind_host: str, allowed_hosts: str) -> frozenset[str] | None:
    """The host names to accept, or None for any."""
    given = frozenset(h.strip().lower() for h in allowed_hosts.split(",") if h.strip())
    if "*" in given:
        return None
    if given:
        return given | LOOPBACK_NAMES
    return LOOPBACK_NAMES if _is_loopback(bind_host) else None


def host_name(value: str) -> str:
    """``Host`` header value without its port: ``[::1]:8000`` → ``::1``."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class HostCheck:
    """400 ``malformed_request`` for a ``Host`` outside the allowed names."""

    def __init__(self, app: ASGIApp, bind_host: str = "127.0.0.1", allowed_hosts: str = "") -> None:
        self.app = app
        self.names = allowed_names(bind_host, allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.names is None or self._allowed(scope):
            return await self.app(scope, receive, send)
        response = error_response(scope.get("state", {}).get("request_id", ""), 400,
                                  "malformed_request",
                                  "this server does not answer to that host name")
        await response(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        for name, value in scope.get("headers", []):
            if name == b"host":
                return host_name(value.decode("latin-1")) in self.names
        return True  # HTTP/1.0 without Host: no browser sends that
