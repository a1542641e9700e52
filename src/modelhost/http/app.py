"""The FastAPI application: route table, the gate and error handlers. Built by assembly.py;
it has no lifespan of its own: application.py starts and stops what it serves, in one order."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from fastapi import FastAPI, routing

from .. import __version__
from ..access.limits import Limiter
from ..metrics import Metrics
from ..predictor import Predictor
from ..registry import Registry
from ..settings import Settings
from . import (
    docs,
    errors,
    pages,
    routes_feedback,
    routes_models,
    routes_ops,
    routes_predict,
    routes_routing,
    routes_tfserving,
    routes_v2,
)
from .auth import KeyPolicy
from .crosssite import CrossSitePolicy
from .gate import BodyLimit, Gate
from .hosts import HostPolicy
from .ratelimit import RatePolicy
from .responses import JSON

if TYPE_CHECKING:
    from ..access.keys import KeyRing
    from ..supply.control import ModelControl


def create_app(registry: Registry, predictor: Predictor, metrics: Metrics, settings: Settings, *,
               keys: KeyRing | None = None, limiter: Limiter | None = None,
               control: ModelControl | None = None) -> FastAPI:
    """The app; ``keys`` and ``limiter`` are shared with the gRPC port (one budget per key)."""
    prediction_log = predictor.prediction_log

    app = FastAPI(
        title="modelhost",
        version=__version__,
        description="Image classification API: top-k labels with scores.",
        default_response_class=JSON,
        docs_url=None,
        redoc_url=None,
    )
    errors.install(app)
    app.include_router(routes_predict.router(registry, predictor, metrics, settings))
    app.include_router(routes_models.router(registry))
    app.include_router(routes_routing.router(registry, prediction_log))
    app.include_router(routes_feedback.router(registry, prediction_log,
                                              allow_new_labels=settings.allow_new_labels))
    app.include_router(routes_ops.router(registry, metrics, prediction_log))
    app.include_router(routes_v2.router(registry, predictor, metrics, settings, control))
    app.include_router(routes_tfserving.router(registry, predictor, metrics, settings))
    app.include_router(pages.router(allow_urls=settings.allow_urls))
    docs.install(app)
    app.mount("/static", pages.static_files(), name="static")
    app.add_middleware(
        Gate, hosts=HostPolicy(settings.host, settings.allowed_hosts),
        crosssite=CrossSitePolicy(settings.allowed_origins),
        keys=KeyPolicy(keys, settings.protect_ops), rate=RatePolicy(limiter),
        body=BodyLimit(settings.max_body))
    _build_routes(app)
    return app


def _build_routes(app: FastAPI) -> None:
    """Build every included route's state now, once, in the thread that builds the app.

    FastAPI 0.165 builds an included router's routes at the first request that reaches them,
    in the server's thread: parameter and response models go through pydantic inside
    ``warnings.catch_warnings()``, which swaps the process's one list of warning filters and
    is not thread-safe. Another thread changing the filters meanwhile (another server's first
    requests, pytest between tests) let a warning FastAPI silences escape, and where warnings
    are errors (the tests) the request failed with a 500. Built here, no request builds any.

    ``iter_route_contexts`` (public name, undocumented) is what FastAPI's OpenAPI builder
    walks; were it gone, ``app.openapi()`` walks the same routes through public API.
    """
    walk = getattr(routing, "iter_route_contexts", None)
    if walk is None:
        app.openapi()
        return
    deque(walk(app.routes), maxlen=0)
