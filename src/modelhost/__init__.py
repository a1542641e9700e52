"""modelhost: serve a trained image model as a fast, safe, observable web API.

Nothing runs on import; the server is built by :func:`modelhost.assembly.build`. The
clients (``modelhost.Client``, ``modelhost.AsyncClient``) load httpx on first use only.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["AsyncClient", "Client", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("Client", "AsyncClient"):
        from . import client

        return getattr(client, name)
    raise AttributeError(f"module 'modelhost' has no attribute {name!r}")
