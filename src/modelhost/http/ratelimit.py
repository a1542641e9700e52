"""Rate limits per API key name, or per client address when no key is in use.

Built on the ``limits`` library: a moving window in memory by default, or in Redis (given by URL)
so that several replicas share one budget. ``--rate-limit 20/s --burst 40`` allows 40 requests at
once and 20/s sustained: at most ``burst`` requests in any window of ``ceil(burst / rate)``
seconds, which never lets the sustained rate exceed the one given.

Over the limit: 429 ``rate_limited`` with ``Retry-After``; every limited response carries the
IETF draft ``RateLimit-Limit``, ``RateLimit-Remaining``, ``RateLimit-Reset`` and
``RateLimit-Policy`` headers. If the shared storage fails, requests are served (and a warning
logged): an outage of the limiter must not become an outage of the API.
"""

from __future__ import annotations

import logging
import math
import re
import time
from typing import NamedTuple

from limits import RateLimitItem, RateLimitItemPerSecond, parse
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import ConfigurationError, StorageError
from limits.storage import storage_from_string
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..settings import ConfigError, Settings
from .errors import error_response
from .public import is_ops, is_page

log = logging.getLogger("modelhost.ratelimit")
_SHORT_UNITS = {"s": "second", "m": "minute", "h": "hour", "d": "day"}


def limit_item(rate: str, burst: int | None) -> RateLimitItem:
    """``20/s`` (or anything ``limits`` parses: ``100/minute``, ``5 per hour``) plus a burst."""
    text = re.sub(r"/\s*([smhd])\s*$", lambda m: "/" + _SHORT_UNITS[m[1]], rate.strip())
    try:
        item = parse(text)
    except ValueError:
        raise ConfigError(f"rate limit {rate!r}: expected e.g. 20/s or 100/minute") from None
    if burst is None:
        return item
    per_second = item.amount / item.get_expiry()
    if burst < per_second:
        raise ConfigError(f"burst {burst} is smaller than the rate ({per_second:g}/s)")
    return RateLimitItemPerSecond(burst, math.ceil(burst / per_second - 1e-9))


class Count(NamedTuple):
    """One counted request: whether it is allowed, what is left, seconds until a slot frees."""

    allowed: bool
    remaining: int
    reset: float


class Limiter:
    """One rate-limit policy over one storage (``memory://`` or ``redis://host:port``)."""

    def __init__(self, item: RateLimitItem, storage_url: str = "memory://") -> None:
        self.item = item
        options = {"implementation": "redispy", "socket_timeout": 0.5,
                   "socket_connect_timeout": 0.5} if storage_url.startswith("redis") else {}
        try:
            storage = storage_from_string(f"async+{storage_url}", wrap_exceptions=True, **options)
        except (ConfigurationError, ValueError) as exc:
            raise ConfigError(f"rate-limit storage {storage_url!r}: {exc}") from None
        self.strategy = MovingWindowRateLimiter(storage)
        self.policy = f"{item.amount};w={item.get_expiry()}"

    async def hit(self, identity: str) -> Count | None:
        """Count one request of ``identity``; None when the shared storage failed (logged):
        the caller then serves the request unlimited."""
        try:
            allowed = await self.strategy.hit(self.item, identity)
            stats = await self.strategy.get_window_stats(self.item, identity)
        except StorageError as exc:
            log.warning("rate-limit storage failed; serving without a limit: %s",
                        type(exc.storage_error).__name__)
            return None
        return Count(allowed, stats.remaining, max(0.0, stats.reset_time - time.time()))


class RateLimit:
    """429 over the limit; a pass-through when ``limiter`` is None."""

    def __init__(self, app: ASGIApp, limiter: Limiter | None) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or self.limiter is None or is_ops(scope["path"])
                or is_page(scope["method"], scope["path"])):
            return await self.app(scope, receive, send)
        state = scope.setdefault("state", {})
        counted = await self.limiter.hit(identity(state.get("api_key_name"),
                                                  (scope.get("client") or ("unknown", 0))[0]))
        if counted is None:
            return await self.app(scope, receive, send)
        allowed, remaining, reset = counted
        headers = [(b"ratelimit-limit", str(self.limiter.item.amount).encode()),
                   (b"ratelimit-remaining", str(remaining).encode()),
                   (b"ratelimit-reset", str(math.ceil(reset)).encode()),
                   (b"ratelimit-policy", self.limiter.policy.encode())]
        if not allowed:
            response = error_response(state.get("request_id", ""), 429, "rate_limited",
                                      "too many requests; slow down", retry_after=reset)
            response.raw_headers.extend(headers)
            return await response(scope, receive, send)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *headers]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def identity(key_name: str | None, address: str) -> str:
    """Who is counted: the API key's name, else the client address (HTTP and gRPC alike)."""
    return f"key:{key_name}" if key_name else f"addr:{address}"


def limiter_for(settings: Settings) -> Limiter | None:
    """The limiter ``settings`` ask for, or None when rate limiting is off."""
    if settings.rate_limit is None:
        return None
    return Limiter(limit_item(settings.rate_limit, settings.burst), settings.rate_limit_storage)
