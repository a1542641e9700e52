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
- **chunk framing**: the bytes of a chunked body that are not data (chunk sizes, line ends,
  chunk extensions, trailers) beyond ``MAX_CHUNK_EXTRA`` bytes → 400 ``malformed_request``
  and close: extensions are never used by real clients, and without a cap a client could
  stream them forever (100 KB were accepted).
- **connections per client address**: over ``max_connections_per_client`` → 503 and close
  (0 turns it off; behind a reverse proxy every connection comes from the proxy).

Each response leaves in one write (:class:`_OneWrite`): uvicorn writes the status line and
headers as soon as the app starts its response and the body separately, so with Nagle off every
response went out as two TCP segments and woke its client twice. Writes made in one turn of the
event loop are now joined and sent at the end of it: one segment per response (tests count the
segments the kernel delivers); MobileNetV2 at concurrency 1 answered 0.3–0.5 ms sooner (paired
runs, docs/benchmarks.md).

Shutdown closes connections only between requests: once draining starts every response says
``connection: close``, a request whose headers are still arriving is read and answered, and an
idle keep-alive connection stays open ``IDLE_LINGER`` seconds more, so that a request the client
sent just as the drain began is answered instead of reset (uvicorn closes idle connections at
once, and closing a socket with an unread request in it resets the connection).
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
    draining: bool = False  # set on SIGTERM: every response from now on closes its connection
    closing: bool = False  # set when the listener closes: idle connections linger, then close

    def admit(self, peer: str) -> bool:
        if self.max_connections_per_client and self.open[peer] >= self.max_connections_per_client:
            return False
        self.open[peer] += 1
        return True

    def release(self, peer: str) -> None:
        self.open[peer] -= 1
        if self.open[peer] <= 0:
            del self.open[peer]


def guarded_protocol(guard: ConnectionGuard) -> type[GuardedProtocol]:
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


IDLE_LINGER = 0.5  # seconds an idle connection stays open at shutdown for a request in flight
MAX_CHUNK_EXTRA = 4096  # chunk-extension and trailer bytes one chunked request may send
CHUNK_FRAME = 24  # a chunk's own framing: up to 16 hex digits and two line ends, with slack


@dataclass
class _ChunkFraming:
    """Counts the bytes of a chunked request that are not body data, one ``data_received`` at
    a time: the bytes received, less the body and (in the call that ends them) the headers."""

    chunked: bool = False
    extra: int = 0  # framing bytes so far
    chunks: int = 0
    body: int = 0  # body bytes in the current call
    headers: int = 0  # header bytes in the current call
    done: bool = False  # the request ended in the current call: stop counting after it

    def start_call(self) -> None:
        self.body = self.headers = 0

    def end_call(self, received: int) -> bool:
        """Account for a call's bytes; True when the request is over its allowance."""
        if not self.chunked:
            return False
        self.extra += received - self.body - self.headers
        self.chunked = not self.done
        return self.extra > MAX_CHUNK_EXTRA + CHUNK_FRAME * (self.chunks + 1)


class _OneWrite:
    """The connection's transport, with the writes of one event-loop turn joined into one
    (see the module docstring). Everything else is the transport's own; ``close`` sends what
    is pending first, ``abort`` drops it, as a transport's would."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)

    def flush(self) -> None:
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending = []
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str):
        return getattr(self._transport, name)


class GuardedProtocol(HttpToolsProtocol):
    guard: ClassVar[ConnectionGuard]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        transport = _OneWrite(transport, asyncio.get_running_loop())  # type: ignore[assignment]
        super().connection_made(transport)
        self._peer = self.client[0] if self.client else ""
        self._admitted = self.guard.admit(self._peer)
        self._timer: asyncio.TimerHandle | None = None
        self._awaiting_headers, self._header_bytes = True, 0
        self._framing = _ChunkFraming()
        if not self._admitted:
            transport.write(_raw(Unavailable("too many connections from this address",
                                             "overloaded"), "Service Unavailable"))
            transport.close()
            return
        if self.guard.closing:  # accepted from the backlog at shutdown
            self._arm(IDLE_LINGER, self.transport.close)
        else:
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
        self._framing.start_call()
        self._before = self._header_bytes
        if self._awaiting_headers:
            self._header_bytes += len(data)
        super().data_received(data)
        if self._framing.end_call(len(data)) and not self.transport.is_closing():
            self._refuse_framing()
        elif (self._awaiting_headers and self._header_bytes > self.guard.max_header_bytes
                and not self.transport.is_closing()):
            self._refuse(_raw(MalformedRequest(self._too_large_text()), "Bad Request"))

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        self._arm(self.guard.body_timeout, self._body_too_slow)
        size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
        self._framing = _ChunkFraming(chunked=any(
            n.lower() == b"transfer-encoding" and b"chunked" in v.lower() for n, v in self.headers))
        # this call's header bytes: the request line (method, URL, version) and the blank line
        self._framing.headers = max(0, size + 32 - self._before)
        app = self.app
        if size > self.guard.max_header_bytes:
            self.app = self._too_large_app
        try:
            super().on_headers_complete()
        finally:
            self.app = app
        if self.guard.draining and self.cycle is not None:
            self.cycle.keep_alive = False  # answered, then closed: no request after this one

    def on_body(self, body: bytes) -> None:
        self._framing.body += len(body)
        super().on_body(body)

    def on_chunk_header(self) -> None:
        self._framing.chunks += 1

    def on_message_complete(self) -> None:
        self._framing.done = True
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self._idle():  # not if a pipelined one started
            self._awaiting_headers, self._header_bytes = True, 0
            self._arm(self.guard.header_timeout, self._headers_too_slow)

    def shutdown(self) -> None:
        """Close between requests only (see the module docstring); uvicorn waits for the
        connection to go, within its graceful-shutdown timeout."""
        self.guard.draining = True
        if not self._idle():
            super().shutdown()  # the response in progress is sent with connection: close
        elif self._awaiting_headers and not self._header_bytes:
            self._arm(IDLE_LINGER, self.transport.close)
        # else a request's headers are arriving: it is read, answered and then closed

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

    def _refuse_framing(self) -> None:
        """400 unless the response has begun; the app sees the client gone either way."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            self.transport.write(_raw(MalformedRequest(
                f"chunk extensions over {MAX_CHUNK_EXTRA:,} bytes"), "Bad Request"))
        if cycle is not None:
            cycle.disconnected = True
            cycle.message_event.set()
        self._disarm()
        self.transport.close()

    def _too_large_text(self) -> str:
        return f"the request line and headers are over {self.guard.max_header_bytes:,} bytes"

    async def _too_large_app(self, scope, receive, send) -> None:
        refusal = MalformedRequest(self._too_large_text(), headers={"Connection": "close"})
        response = render(refusal, scope["path"], "")
        await response(scope, receive, send)


def http_protocol(settings: Settings) -> type[GuardedProtocol]:
    """The guarded protocol configured by ``settings``."""
    return guarded_protocol(ConnectionGuard(
        header_timeout=settings.header_timeout, body_timeout=settings.body_timeout,
        max_header_bytes=settings.max_header_bytes,
        max_connections_per_client=settings.max_connections_per_client))
