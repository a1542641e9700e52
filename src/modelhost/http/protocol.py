"""uvicorn's httptools protocol with deadlines and caps that uvicorn lacks (measured: a plain
uvicorn 0.54 + httptools server kept a connection that sent nothing, or half a header, open
indefinitely, and accepted 2 MB of headers).

Per connection:
- **header deadline**: from the moment a connection opens, and again from the end of each
  response, the next request's line and headers must arrive within ``header_timeout`` seconds
  (slowloris; a body trickled after a response does not reset it). Late → 408 and close.
- **header size**: request line plus headers over ``max_header_bytes`` → 400
  ``malformed_request`` (checked while they stream in, and exactly once parsed).
- **body deadline**: once headers are in, the body must arrive within ``body_timeout``
  seconds, or the connection is closed (the prediction routes answer 408 earlier, at the
  request deadline).
- **connections per client address**: over ``max_connections_per_client`` → 503 and close
  (0 turns it off; behind a reverse proxy every connection comes from the proxy).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ..errors import MalformedRequest, ModelhostError, RequestTimeout, Unavailable
from ..settings import Settings
from .errors import render


@dataclass
class ConnectionGuard:
    """The limits, and the open-connection count per client address they share."""

    header_timeout: float = 10.0
    body_timeout: float = 60.0
    max_header_bytes: int = 16 * 1024
    max_connections_per_client: int = 100
    open: Counter = field(default_factory=Counter)

    def admit(self, peer: str) -> bool:
        if self.max_connections_per_client and self.open[peer] >= self.max_connections_per_client:
            return False
        self.open[peer] += 1
        return True

    def release(self, peer: str) -> None:
        self.open[peer] -= 1
        if self.open[peer] <= 0:
            del self.open[peer]


def guarded_protocol(guard: ConnectionGuard) -> type[HttpToolsProtocol]:
    """The protocol class to give ``uvicorn.Config(http=...)``."""
    return type("GuardedHttpToolsProtocol", (GuardedProtocol,), {"guard": guard})


def _raw(exc: ModelhostError, reason: str) -> bytes:
    """A complete error response for a connection no ASGI cycle owns (rendered like any other
    error, in the native dialect: no route was chosen)."""
    response = render(exc, "", "")
    headers = "".join(f"{name.decode()}: {value.decode()}\r\n"
                      for name, value in response.raw_headers if name != b"content-length")
    return (f"HTTP/1.1 {response.status_code} {reason}\r\n{headers}"
            "x-content-type-options: nosniff\r\n"
            f"content-length: {len(response.body)}\r\nconnection: close\r\n\r\n"
            ).encode() + bytes(response.body)


class GuardedProtocol(HttpToolsProtocol):
    guard: ClassVar[ConnectionGuard]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._peer = self.client[0] if self.client else ""
        self._admitted = self.guard.admit(self._peer)
        self._timer: asyncio.TimerHandle | None = None
        self._awaiting_headers, self._header_bytes = True, 0
        if not self._admitted:
            transport.write(_raw(Unavailable("too many connections from this address",
                                             "overloaded"), "Service Unavailable"))
            transport.close()
            return
        self._arm(self.guard.header_timeout, self._headers_too_slow)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._admitted:
            self._admitted = False
            self.guard.release(self._peer)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        if self._awaiting_headers:
            self._header_bytes += len(data)
        super().data_received(data)
        if (self._awaiting_headers and self._header_bytes > self.guard.max_header_bytes
                and not self.transport.is_closing()):
            self._refuse(_raw(MalformedRequest(self._too_large_text()), "Bad Request"))

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        self._arm(self.guard.body_timeout, self._body_too_slow)
        size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
        if size <= self.guard.max_header_bytes:
            return super().on_headers_complete()
        app, self.app = self.app, self._too_large_app
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self._idle():  # not if a pipelined one started
            self._awaiting_headers, self._header_bytes = True, 0
            self._arm(self.guard.header_timeout, self._headers_too_slow)

    # -- helpers --------------------------------------------------------------------------

    def _arm(self, delay: float, callback) -> None:
        self._disarm()
        self._timer = self.loop.call_later(delay, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _idle(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _headers_too_slow(self) -> None:
        if self.transport.is_closing():
            return
        if self._idle():
            self._refuse(_raw(RequestTimeout("the request headers did not arrive in time"),
                              "Request Timeout"))
        else:
            self.transport.close()

    def _body_too_slow(self) -> None:
        self._timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def _refuse(self, response: bytes) -> None:
        self._disarm()
        if self._idle():
            self.transport.write(response)
        self.transport.close()

    def _too_large_text(self) -> str:
        return f"the request line and headers are over {self.guard.max_header_bytes:,} bytes"

    async def _too_large_app(self, scope, receive, send) -> None:
        refusal = MalformedRequest(self._too_large_text(), headers={"Connection": "close"})
        response = render(refusal, scope["path"], "")
        await response(scope, receive, send)


def http_protocol(settings: Settings) -> type[HttpToolsProtocol]:
    """The guarded protocol configured by ``settings``."""
    return guarded_protocol(ConnectionGuard(
        header_timeout=settings.header_timeout, body_timeout=settings.body_timeout,
        max_header_bytes=settings.max_header_bytes,
        max_connections_per_client=settings.max_connections_per_client))
