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
from typing import TYPE_CHECKING

from ..errors import MalformedRequest

if TYPE_CHECKING:
    from .gate import Head

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


class HostPolicy:
    """400 ``malformed_request`` for a ``Host`` outside the allowed names."""

    def __init__(self, bind_host: str = "127.0.0.1", allowed_hosts: str = "") -> None:
        self.names = allowed_names(bind_host, allowed_hosts)

    def check(self, head: Head) -> None:
        host = head.headers.get("host")
        if self.names is None or host is None:  # HTTP/1.0 without Host: no browser sends that
            return
        if host_name(host) not in self.names:
            raise MalformedRequest("this server does not answer to that host name")
