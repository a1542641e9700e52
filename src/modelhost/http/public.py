"""Which requests are open to anyone: the page and its assets, and (unless protected) the
health, readiness and metrics endpoints that probes and Prometheus call without a key.

Everything else, including paths that match no route, needs a key and counts against the rate
limit, so that a 404 reveals nothing to an unauthenticated client.
"""

from __future__ import annotations

OPS_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"})
PAGE_PATHS = frozenset({"/", "/favicon.ico", "/docs", "/openapi.json", "/dashboard"})
PAGE_PREFIXES = ("/static/",)


def is_ops(path: str) -> bool:
    return path in OPS_PATHS


def is_page(method: str, path: str) -> bool:
    """Static pages and assets; read-only methods only."""
    return method in ("GET", "HEAD") and (path in PAGE_PATHS or path.startswith(PAGE_PREFIXES))
