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
from . import errors, pages, routes_models, routes_ops, routes_predict
from .middleware import BodyLimit, RequestContext
from .responses import JSON

if TYPE_CHECKING:
    from ..watch import RepositoryWatcher


def create_app(service: PredictionService, metrics: Metrics, settings: Settings,
               watcher: RepositoryWatcher | None = None) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
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
    app.include_router(routes_ops.router(service, metrics))
    app.include_router(pages.router())
    app.mount("/static", pages.static_files(), name="static")
    app.add_middleware(BodyLimit, max_body=settings.max_body)
    app.add_middleware(RequestContext)
    return app
