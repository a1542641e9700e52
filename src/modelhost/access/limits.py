"""Rate limits per API key name, or per client address when no key is in use: one budget
shared by the HTTP and gRPC ports (http/ratelimit.py and grpc_guard.py apply it).

Built on the ``limits`` library: a moving window in memory by default, or in Redis (given by URL)
so that several replicas share one budget. ``--rate-limit 20/s --burst 40`` allows 40 requests at
once and 20/s sustained: at most ``burst`` requests in any window of ``ceil(burst / rate)``
seconds, which never lets the sustained rate exceed the one given. If the shared storage fails,
requests are served (and a warning logged): an outage of the limiter must not become an outage
of the API.
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

from ..settings import ConfigError, Settings

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


def identity(key_name: str | None, address: str) -> str:
    """Who is counted: the API key's name, else the client address (HTTP and gRPC alike)."""
    return f"key:{key_name}" if key_name else f"addr:{address}"


def limiter_for(settings: Settings) -> Limiter | None:
    """The limiter ``settings`` ask for, or None when rate limiting is off."""
    if settings.rate_limit is None:
        return None
    return Limiter(limit_item(settings.rate_limit, settings.burst), settings.rate_limit_storage)
