"""The one door every HTTP request passes: a pure-ASGI gate that reads the headers once.

In this order, each policy refusing with a :class:`ModelhostError` rendered by
``errors.render`` (so in the route's dialect):

    request id → Host (DNS rebinding) → cross-site (CSRF) → API key → rate limit → body limit

Every response, refusals included, gets the request id and the security headers. The body limit
is applied twice: to a declared ``Content-Length`` here, and to the bytes as they stream in
(``BodyLimit.counting``), so an oversized upload is refused before it is read whole. The
policies live in their own modules (hosts, crosssite, auth, ratelimit); the gate only orders
them and turns a refusal into a response.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import ModelhostError, TooLarge
from .auth import KeyPolicy
from .crosssite import CrossSitePolicy
from .errors import render
from .hosts import HostPolicy
from .ratelimit import RatePolicy

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
     b"frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
]
_READ = frozenset({b"host", b"origin", b"sec-fetch-site", b"authorization", b"x-api-key",
                   b"content-length", b"x-request-id"})


@dataclass(frozen=True)
class Head:
    """What the policies read of a request, decoded once."""

    method: str
    path: str
    scheme: str
    client: str
    headers: dict[str, str]

    @classmethod
    def of(cls, scope: Scope) -> Head:
        headers: dict[str, str] = {}
        for name, value in scope.get("headers", []):
            if name in _READ:  # the first of a repeated header counts, as it always did
                headers.setdefault(name.decode(), value.decode("latin-1"))
        return cls(scope["method"], scope["path"], scope.get("scheme", "http"),
                   (scope.get("client") or ("unknown", 0))[0], headers)

    @classmethod
    def of_pairs(cls, method: str, path: str, client: str,
                 pairs: list[tuple[str, str]]) -> Head:
        """The same, from decoded header pairs (the ops port's standard-library server)."""
        headers: dict[str, str] = {}
        for name, value in pairs:
            if name.lower().encode() in _READ:
                headers.setdefault(name.lower(), value)
        return cls(method, path, "http", client, headers)

    def request_id(self) -> str:
        """The client's ``X-Request-ID`` when it is sane, else a fresh one."""
        text = self.headers.get("x-request-id", "")
        if 0 < len(text) <= 64 and all(c.isalnum() or c in "-_." for c in text):
            return text
        return secrets.token_hex(8)


class BodyLimit:
    """413 ``body_too_large`` for bodies over ``max_body`` bytes, declared or streamed."""

    def __init__(self, max_body: int) -> None:
        self.max_body = max_body

    def _refusal(self) -> TooLarge:
        return TooLarge(f"the request body is over {self.max_body:,} bytes", "body_too_large",
                        headers={"Connection": "close"})

    def check(self, head: Head) -> None:
        try:
            declared = int(head.headers.get("content-length", ""))
        except ValueError:
            return
        if declared > self.max_body:
            raise self._refusal()

    def counting(self, receive: Receive) -> Receive:
        """``receive`` that raises the same refusal once the streamed bytes pass the limit
        (the route's error handler renders it)."""
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise self._refusal()
            return message

        return counting_receive


class Gate:
    """The policies in their order, in front of ``app``."""

    def __init__(self, app: ASGIApp, *, hosts: HostPolicy, crosssite: CrossSitePolicy,
                 keys: KeyPolicy, rate: RatePolicy, body: BodyLimit) -> None:
        self.app = app
        self._hosts, self._crosssite, self._keys = hosts, crosssite, keys
        self._rate, self._body = rate, body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        head = Head.of(scope)
        request_id = head.request_id()
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        send = _with_headers(send, [(b"x-request-id", request_id.encode()),
                                    *SECURITY_HEADERS])
        try:
            self._hosts.check(head)
            self._crosssite.check(head, request_id)
            key_name = self._keys.check(head, request_id)
            if key_name is not None:
                state["api_key_name"] = key_name
            rate_headers = await self._rate.check(head, key_name)
            self._body.check(head)
        except ModelhostError as refusal:
            return await render(refusal, head.path, request_id)(scope, receive, send)
        if rate_headers:
            send = _with_headers(send, rate_headers)
        await self.app(scope, self._body.counting(receive), send)


def _with_headers(send: Send, headers: list[tuple[bytes, bytes]]) -> Send:
    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), *headers]
        await send(message)

    return send_with_headers
