"""The native prediction API under /api."""

from __future__ import annotations

from dataclasses import replace

from fastapi import APIRouter, Request

from ..errors import InvalidInput, ModelhostError
from ..metrics import Metrics
from ..predictor import Predictor
from ..registry import RegistryView
from ..settings import Settings
from .errors import request_id_of
from .parse import deadline_for, query_source, read_predict_request
from .responses import JSON
from .schemas import ERRORS, ManyResults, PredictionBody, documented

_BODY_DOC = {
    "requestBody": {
        "description": "The image: a multipart file field `image`, the raw image bytes, or "
                       "JSON with one of `image_base64`, `url`, `path`.",
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "properties": {
                "image": {"type": "string", "format": "binary"},
                "top_k": {"type": "integer"}, "x": {"type": "number"},
                "y": {"type": "number"}, "crop": {"type": "number"}}}},
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {"schema": {"type": "object", "properties": {
                "image_base64": {"type": "string"}, "url": {"type": "string"},
                "path": {"type": "string"}, "top_k": {"type": "integer"},
                "x": {"type": "number"}, "y": {"type": "number"},
                "crop": {"type": "number"}}}},
        },
    }
}
_OPTIONS_DOC = [
    {"name": n, "in": "query", "required": False, "schema": {"type": t}, "description": d}
    for n, t, d in (
        ("top_k", "integer", "How many labels to return (1–1000; default from the model)."),
        ("x", "number", "Point of interest, pixels from the left of the upright image."),
        ("y", "number", "Point of interest, pixels from the top."),
        ("crop", "number", "Square crop around (x, y) as a fraction of the shorter side."),
    )
]


def router(registry: RegistryView, predictor: Predictor, metrics: Metrics,
           settings: Settings) -> APIRouter:
    api = APIRouter(prefix="/api", tags=["predict"], responses=ERRORS)

    def counted(model: str, route: str, status: int) -> None:
        metrics.requests.labels(model, route, str(status)).inc()

    async def run_one(request: Request, model: str, route: str, parse,
                      version: str | None = None, label: str | None = None) -> JSON:
        """One image through ``model`` (the ``version`` or ``label`` the path names, else the
        one the model's routing chooses); the version that answered is in the body and in
        ``X-Model-Version``."""
        try:
            deadline = deadline_for(request, settings.timeout)
            predict_request = replace(await parse(deadline), version=version, label=label)
            prediction = await predictor.predict(model, predict_request, deadline,
                                               request_id_of(request))
        except ModelhostError as exc:
            counted(model if model in registry.models else "", route, exc.status)
            raise
        counted(model, route, 200)
        return JSON(prediction.as_dict(), headers={"X-Prediction-Id": prediction.id,
                                                   "X-Model-Version": prediction.version})

    async def uploaded(request: Request, model: str, version: str | None = None,
                       label: str | None = None) -> JSON:
        """The image in the POST body (multipart or raw) through :func:`run_one`."""
        return await run_one(request, model, "predict",
                             lambda deadline: read_predict_request(request, deadline),
                             version=version, label=label)

    @api.post("/models/{model}/predict", openapi_extra={**_BODY_DOC, "parameters": _OPTIONS_DOC},
              summary="Classify one image with one model", **documented(PredictionBody))
    async def predict(model: str, request: Request) -> JSON:
        return await uploaded(request, model)

    @api.post("/models/{model}/versions/{version}/predict",
              openapi_extra={**_BODY_DOC, "parameters": _OPTIONS_DOC},
              summary="Classify one image with one served version of a model",
              **documented(PredictionBody))
    async def predict_version(model: str, version: str, request: Request) -> JSON:
        return await uploaded(request, model, version=version)

    @api.post("/models/{model}/labels/{label}/predict",
              openapi_extra={**_BODY_DOC, "parameters": _OPTIONS_DOC},
              summary="Classify one image with the version a label names (e.g. canary)",
              **documented(PredictionBody))
    async def predict_label(model: str, label: str, request: Request) -> JSON:
        return await uploaded(request, model, label=label)

    @api.get("/models/{model}/predict", summary="Classify an image named by ?url= or ?path=",
             **documented(PredictionBody),
             openapi_extra={"parameters": [
                 {"name": "url", "in": "query", "schema": {"type": "string"}},
                 {"name": "path", "in": "query", "schema": {"type": "string"}},
                 *_OPTIONS_DOC]})
    async def predict_get(model: str, request: Request) -> JSON:
        async def parse(_deadline: float):
            return query_source(request)

        return await run_one(request, model, "predict", parse)

    @api.post("/predict", summary="One image through several models (?models=a,b)",
              **documented(ManyResults),
              openapi_extra={**_BODY_DOC, "parameters": [
                  {"name": "models", "in": "query", "required": True,
                   "schema": {"type": "string"}, "description": "Comma-separated model names."},
                  *_OPTIONS_DOC]})
    async def predict_many(request: Request) -> JSON:
        names = _model_names(request.query_params.get("models", ""))
        deadline = deadline_for(request, settings.timeout)
        predict_request = await read_predict_request(request, deadline)
        outcomes = await predictor.predict_many(names, predict_request, deadline,
                                              request_id_of(request))
        body, any_ok = {}, False
        for name, outcome in outcomes.items():
            if isinstance(outcome, ModelhostError):
                counted(name, "predict_many", outcome.status)
                body[name] = {"error": {"code": outcome.code, "message": outcome.message}}
            else:
                counted(name, "predict_many", 200)
                body[name] = outcome.as_dict()
                any_ok = True
        status = 200 if any_ok else _worst_status(outcomes)
        return JSON({"results": body, "request_id": request_id_of(request)},
                              status_code=status)

    return api


def _model_names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise InvalidInput("name the models: ?models=a,b")
    if len(names) > 16 or len(set(names)) != len(names):
        raise InvalidInput("models must list at most 16 distinct names")
    return names


def _worst_status(outcomes: dict) -> int:
    """When every model failed, answer with the first failure's status."""
    return next(iter(outcomes.values())).status
