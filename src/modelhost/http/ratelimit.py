"""The rate limit on the HTTP side: a policy of the gate (gate.py) over the shared limiter
(access/limits.py).

Over the limit: 429 ``rate_limited`` with ``Retry-After``; every limited response carries the
IETF draft ``RateLimit-Limit``, ``RateLimit-Remaining``, ``RateLimit-Reset`` and
``RateLimit-Policy`` headers. The page and the ops endpoints are never counted.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ..access.limits import Limiter, identity
from ..errors import RateLimited
from .public import is_ops, is_page

if TYPE_CHECKING:
    from .gate import Head


class RatePolicy:
    """429 over the limit, with the RateLimit headers on every counted response; lets
    everything pass when ``limiter`` is None."""

    def __init__(self, limiter: Limiter | None) -> None:
        self.limiter = limiter

    async def check(self, head: Head, key_name: str | None) -> list[tuple[bytes, bytes]]:
        """The headers to add to the response; :class:`RateLimited` over the limit."""
        if self.limiter is None or is_ops(head.path) or is_page(head.method, head.path):
            return []
        counted = await self.limiter.hit(identity(key_name, head.client))
        if counted is None:
            return []
        allowed, remaining, reset = counted
        headers = {"ratelimit-limit": str(self.limiter.item.amount),
                   "ratelimit-remaining": str(remaining),
                   "ratelimit-reset": str(math.ceil(reset)),
                   "ratelimit-policy": self.limiter.policy}
        if not allowed:
            raise RateLimited("too many requests; slow down", retry_after=reset,
                              headers=headers)
        return [(name.encode(), value.encode()) for name, value in headers.items()]
