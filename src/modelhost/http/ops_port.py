"""The ops port (``--ops-port``): /healthz, /readyz and /metrics answered by a thread of their own.

Every request to the main port passes one event loop. When predictions saturate it — the tiny
benchmark model at concurrency 64, where the loop runs long rounds of parsing and answering — a
probe waits its turn: /healthz p99 was ~100 ms there, and a balancer or a kubelet probing the
main port can take a busy, healthy instance for a dead one. This port's thread waits in
``accept`` and needs the GIL only for the microseconds of an answer, which Python hands over
within its switch interval (5 ms) whatever the loop is doing (docs/benchmarks.md, "Probes").

The answers are the main port's own: the same readiness (``routes_ops.readiness``) and the same
Prometheus text; the same Host check and, with ``--protect-ops``, the same API keys; refusals
rendered by ``errors.render``. Only GET and HEAD of those three paths; anything else is 404.
The standard library's threading HTTP server serves it: one short-lived thread per connection,
a socket timeout so a slow client holds only its own.
"""

from __future__ import annotations

import logging
import secrets
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

import orjson
from prometheus_client import CONTENT_TYPE_LATEST

from ..errors import (
    InternalError,
    MalformedRequest,
    MethodNotAllowed,
    ModelhostError,
    NotFound,
    StartupError,
)
from .auth import KeyPolicy
from .errors import render
from .gate import SECURITY_HEADERS, Head
from .hosts import HostPolicy
from .routes_ops import readiness

if TYPE_CHECKING:
    from ..feedback.recorder import PredictionLog
    from ..metrics import Metrics
    from ..registry import Registry

log = logging.getLogger("modelhost.server")
CLIENT_TIMEOUT = 5.0  # seconds a connection may take to send its request
Answer = tuple[int, str, bytes, dict[str, str]]  # status, content type, body, headers


class OpsPortError(StartupError):
    """The ops port cannot be opened (in use, not permitted)."""


class OpsPort:
    """The listener and its thread; :meth:`start` binds, :meth:`stop` closes."""

    def __init__(self, host: str, port: int, *, registry: Registry, metrics: Metrics,
                 prediction_log: PredictionLog | None, hosts: HostPolicy,
                 keys: KeyPolicy) -> None:
        self._address = (host, port)
        self._routes = {
            "/healthz": lambda: _json(200, {"status": "ok"}),
            "/readyz": lambda: _readiness(registry, prediction_log),
            "/metrics": lambda: (200, CONTENT_TYPE_LATEST, metrics.render(), {}),
        }
        self._hosts, self._keys = hosts, keys
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url: str | None = None

    def start(self) -> int:
        """Bind and serve; the bound port. :class:`OpsPortError` when it cannot be bound."""
        server_class = _Server6 if ":" in self._address[0] else _Server
        try:
            self._server = server_class(self._address, _Handler)
        except OSError as exc:
            host, port = self._address
            raise OpsPortError(f"the ops port {host}:{port} cannot be opened: "
                               f"{exc.strerror or exc}") from None
        self._server.ops = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, name="ops-port",
                                        kwargs={"poll_interval": 0.5}, daemon=True)
        self._thread.start()
        port = self._server.server_address[1]
        host = self._address[0]
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
        return port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def answer(self, method: str, path: str, client: str, pairs: list[tuple[str, str]]
               ) -> Answer:
        """The response to one request: the main port's policies, then the route."""
        head = Head.of_pairs(method, path.split("?", 1)[0], client, pairs)
        request_id = head.request_id()
        try:
            self._hosts.check(head)
            self._keys.check(head, request_id)
            route = self._routes.get(head.path)
            if route is None:
                raise NotFound(f"the ops port answers only {', '.join(self._routes)}",
                               "not_found")
            if method not in ("GET", "HEAD"):
                raise MethodNotAllowed(f"{head.path} answers GET and HEAD only",
                                       headers={"Allow": "GET, HEAD"})
            status, content_type, body, extra = _retrying(route)
        except ModelhostError as refusal:
            return refused(refusal, head.path, request_id)
        return status, content_type, body, {"x-request-id": request_id, **extra}


def refused(refusal: ModelhostError, path: str, request_id: str) -> Answer:
    """A refusal as every port renders it (errors.render, the native dialect here)."""
    response = render(refusal, path, request_id)
    headers = {name.decode(): value.decode() for name, value in response.raw_headers
               if name not in (b"content-length", b"content-type")}
    return (response.status_code, response.media_type or "application/json",
            bytes(response.body), {"x-request-id": request_id, **headers})


def _json(status: int, body: dict, headers: dict[str, str] | None = None) -> Answer:
    return status, "application/json", orjson.dumps(body), headers or {}


def _readiness(registry: Registry, prediction_log: PredictionLog | None) -> Answer:
    status, details, headers = readiness(registry, prediction_log)
    return _json(status, details, headers)


def _retrying(route, attempts: int = 3) -> Answer:
    """The registry's dictionaries belong to the event loop's thread; read from this one, a
    model swapped at that moment can change one mid-iteration ("dictionary changed size"):
    read again."""
    for attempt in range(attempts):
        try:
            return route()
        except RuntimeError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = CLIENT_TIMEOUT
    # The headers and the body go out in two writes; with Nagle's algorithm the second waited
    # for the client's delayed ACK: every answer took 40-45 ms (measured, benchmarks/run.py).
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        self._respond()

    def do_HEAD(self) -> None:
        self._respond(send_body=False)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_GET  # 405 from answer()

    def _respond(self, send_body: bool = True) -> None:
        if self.headers.get("Content-Length", "0") != "0" or "Transfer-Encoding" in self.headers:
            self.close_connection = True  # bodies are never read here: end the connection
        ops: OpsPort = self.server.ops  # type: ignore[attr-defined]
        self._send(*ops.answer(self.command, self.path, self.client_address[0],
                               list(self.headers.items())), send_body=send_body)

    def send_error(self, code: int, message: str | None = None,
                   explain: str | None = None) -> None:
        """The server's own refusals (a malformed request line, headers too long) in the
        error contract's JSON instead of the standard library's HTML page."""
        refusal: ModelhostError
        if code == 501:  # a method the standard library has no do_METHOD for
            refusal = MethodNotAllowed(f"{self.command!r} is not a method here",
                                       headers={"Allow": "GET, HEAD"})
        elif code < 500:
            refusal = MalformedRequest(message or "malformed request")
        else:
            refusal = InternalError(message or "internal error")
        self.close_connection = True
        self.request_version = "HTTP/1.1"  # a status line even for a line that did not parse
        self._send(*refused(refusal, "", secrets.token_hex(8)), send_body=self.command != "HEAD")

    def send_response(self, code: int, message: str | None = None) -> None:
        """As the base class, without a ``Server`` header (the main port sends none)."""
        self.send_response_only(code, message)
        self.send_header("Date", self.date_time_string())

    def _send(self, status: int, content_type: str, body: bytes, headers: dict[str, str],
              send_body: bool = True) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for raw_name, raw_value in SECURITY_HEADERS:
            self.send_header(raw_name.decode(), raw_value.decode())
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        """No access lines: probes every few seconds would drown the log."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False


class _Server6(_Server):
    address_family = socket.AF_INET6
