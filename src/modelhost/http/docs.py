"""The OpenAPI document and the /docs page that renders it, offline.

Swagger UI 5 (the first to read OpenAPI 3.1, which FastAPI writes) comes from the files the
``fastapi-offline`` package ships, served from /docs/assets: no CDN, so /docs works on an
air-gapped host. Only its files are used, not its app factory. The page's start-up script is a
file too, because the server's Content-Security-Policy allows no inline scripts.

The protocol routes read their bodies themselves (binary tensor sections, NaN tokens), so
FastAPI cannot see their request models; :func:`install` adds those schemas to the document.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from ..protocols import tfserving, v2

REQUEST_MODELS: tuple[type[BaseModel], ...] = (
    v2.InferenceRequest, v2.RepositoryIndexRequest, v2.RepositoryLoadRequest,
    tfserving.PredictRequest, tfserving.ClassifyRequest,
)
_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>modelhost API</title>
<link rel="icon" href="/docs/assets/favicon.png">
<link rel="stylesheet" href="/docs/assets/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script src="/docs/init.js"></script>
</body>
</html>
"""
_INIT = """window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
  deepLinking: true,
  validatorUrl: null
});
"""


def install(app: FastAPI) -> None:
    """Serve /docs and its assets, and complete the OpenAPI document."""
    import fastapi_offline

    assets = Path(fastapi_offline.__file__).parent / "static"
    app.include_router(_router())
    app.mount("/docs/assets", StaticFiles(directory=assets), name="docs-assets")

    def openapi() -> dict:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version,
                                   description=app.description, routes=app.routes)
            components = document.setdefault("components", {}).setdefault("schemas", {})
            for model in REQUEST_MODELS:
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(schema.pop("$defs", {}))
                components[model.__name__] = schema
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _router() -> APIRouter:
    pages = APIRouter(include_in_schema=False)

    @pages.get("/docs")
    async def docs() -> HTMLResponse:
        return HTMLResponse(_PAGE)

    @pages.get("/docs/init.js")
    async def init() -> Response:
        return Response(_INIT, media_type="text/javascript")

    return pages
