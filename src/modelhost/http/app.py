"""The FastAPI application: route table, middleware and lifespan. Built by assembly.py."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from fastapi import FastAPI

from .. import __version__
from ..metrics import Metrics
from ..service import PredictionService
from ..settings import Settings
from . import (
    docs,
    errors,
    pages,
    routes_feedback,
    routes_models,
    routes_ops,
    routes_predict,
    routes_tfserving,
    routes_v2,
)
from .auth import ApiKeys
from .crosssite import SameOrigin
from .hosts import HostCheck
from .middleware import BodyLimit, RequestContext
from .ratelimit import Limiter, RateLimit
from .responses import JSON

if TYPE_CHECKING:
    from ..apikeys import KeyRing
    from ..model_control import ModelControl
    from ..watch import RepositoryWatcher


def create_app(service: PredictionService, metrics: Metrics, settings: Settings, *,
               keys: KeyRing | None = None, limiter: Limiter | None = None,
               watcher: RepositoryWatcher | None = None,
               control: ModelControl | None = None) -> FastAPI:
    """The app; ``keys`` and ``limiter`` are shared with the gRPC port (one budget per key)."""
    prediction_log = service.prediction_log

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        if prediction_log is not None:
            await prediction_log.start()
        loading = asyncio.create_task(service.start())  # serve /healthz while models load
        watching = asyncio.create_task(watcher.run()) if watcher else None  # --watch
        try:
            yield
        finally:
            for task in (loading, watching):
                if task is not None:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
            await service.stop()
            if prediction_log is not None:  # after the drain: every answered record is in
                await prediction_log.stop()

    app = FastAPI(
        title="modelhost",
        version=__version__,
        description="Image classification API: top-k labels with scores.",
        default_response_class=JSON,
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    errors.install(app)
    app.include_router(routes_predict.router(service, metrics, settings))
    app.include_router(routes_models.router(service))
    app.include_router(routes_feedback.router(service, prediction_log,
                                              allow_new_labels=settings.allow_new_labels))
    app.include_router(routes_ops.router(service, metrics))
    app.include_router(routes_v2.router(service, metrics, settings, control))
    app.include_router(routes_tfserving.router(service, metrics, settings))
    app.include_router(pages.router(allow_urls=settings.allow_urls))
    docs.install(app)
    app.mount("/static", pages.static_files(), name="static")
    app.add_middleware(BodyLimit, max_body=settings.max_body)
    app.add_middleware(RateLimit, limiter=limiter)
    app.add_middleware(ApiKeys, keys=keys, protect_ops=settings.protect_ops)
    app.add_middleware(SameOrigin, allowed_origins=settings.allowed_origins)
    app.add_middleware(HostCheck, bind_host=settings.host, allowed_hosts=settings.allowed_hosts)
    app.add_middleware(RequestContext)
    return app
