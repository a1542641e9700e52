"""KServe Open Inference Protocol V2 over REST, under /v2 (PROTOCOLS.md §4.1, §4.2).

Health answers 200 with a JSON body when true and 503 when false (probes and clients read the
status). Every served version of a model answers at ``/versions/{v}``; a path without a
version goes where the model's routing sends it; versions of its folder that are not served
exist but are not ready. Inference accepts JSON tensors and Triton's binary sections,
including the raw form (``Inference-Header-Content-Length: 0``: the body is one input: a ready
row or an image).
Repository load/unload work with ``--model-control`` only, on the repository's models by name
(supply/control.py); without it they answer 403.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request
from starlette.responses import Response

from .. import __version__
from ..errors import Forbidden, InvalidInput, ModelhostError
from ..metrics import Metrics
from ..predictor import Inference, Predictor
from ..protocols import v2
from ..protocols import v2_model as served_v2
from ..registry import ModelState, RegistryView, ServedModel
from ..settings import Settings
from .parse import call_of, read_body
from .responses import JSON
from .schemas import Responses

if TYPE_CHECKING:
    from ..supply.control import ModelControl

_HEADER = "inference-header-content-length"
_ERRORS: Responses = {status: {"model": v2.ProtocolError} for status in (400, 404, 503)}
INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}},
            "application/octet-stream": {"schema": {
                "type": "string", "format": "binary",
                "description": "Triton binary tensor extension: the JSON request "
                               "(Inference-Header-Content-Length bytes), then the tensors."}},
        },
    },
    "parameters": [{
        "name": "Inference-Header-Content-Length", "in": "header", "required": False,
        "schema": {"type": "integer", "minimum": 0},
        "description": "Length of the JSON part when binary tensors follow (0: raw input).",
    }],
}
INDEX_BODY = {"requestBody": {"required": False, "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/RepositoryIndexRequest"}}}}}
LOAD_BODY = {"requestBody": {"required": False, "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/RepositoryLoadRequest"}}}}}
BINARY_RESPONSE: Responses = {200: {"content": {"application/octet-stream": {"schema": {
    "type": "string", "format": "binary",
    "description": "With binary outputs: the JSON response (Inference-Header-Content-Length "
                   "bytes), then the tensors."}}}}}


def router(registry: RegistryView, predictor: Predictor, metrics: Metrics, settings: Settings,
           control: ModelControl | None = None) -> APIRouter:
    api = APIRouter(prefix="/v2", tags=["kserve v2"],
                    responses=_ERRORS)

    @api.get("", summary="Server metadata", response_model=v2.ServerMetadata)
    async def server_metadata() -> dict:
        return {"name": "modelhost", "version": __version__, "extensions": v2.EXTENSIONS}

    @api.get("/health/live", summary="Server live", response_model=v2.ServerLive)
    async def live() -> dict:
        return {"live": True}

    @api.get("/health/ready", summary="Server ready (503 when not)",
             response_model=v2.ServerReady)
    async def server_ready() -> JSON:
        is_ready, _ = registry.readiness()
        return JSON({"ready": is_ready}, status_code=200 if is_ready else 503)

    @api.get("/models", summary="The served models' names")
    async def models() -> dict[str, list[str]]:
        return {"models": list(registry.models)}

    @api.post("/repository/index", summary="The repository's models and their state",
              response_model=list[v2.RepositoryModel], openapi_extra=INDEX_BODY)
    async def repository_index(request: Request) -> list[dict]:
        body = await request.body()
        only_ready = bool(body) and v2.parse_index_request(body).ready
        served = [_index_entry(m) for name in registry.models
                  for m in registry.versions(name).values()
                  if not only_ready or m.state is ModelState.READY]
        if control is None or only_ready:
            return served
        unloaded = [{"name": spec.name, "version": spec.version, "state": "UNAVAILABLE",
                     "reason": "unloaded"} for name, spec in (await control.repository()).items()
                    if name not in registry.models]
        return served + unloaded

    @api.post("/repository/models/{model}/load", summary="Load (or reload) a repository model",
              response_model=v2.RepositoryLoadResponse, response_model_exclude_none=True,
              openapi_extra=LOAD_BODY, responses={403: {"model": v2.ProtocolError},
                                                  500: {"model": v2.ProtocolError}})
    async def load(request: Request, model: str) -> dict:
        if v2.parse_load_request(await request.body()).supplied_model():
            raise InvalidInput("models load from the server's repository only: "
                               "a config or file parameter is not accepted")
        await _controlled(control).load(model)
        return {"name": model, "load": True}

    @api.post("/repository/models/{model}/unload", summary="Unload a repository model",
              response_model=v2.RepositoryLoadResponse, response_model_exclude_none=True,
              openapi_extra=LOAD_BODY, responses={403: {"model": v2.ProtocolError}})
    async def unload(request: Request, model: str) -> dict:
        v2.parse_load_request(await request.body())  # validated; unload_dependents is moot
        await _controlled(control).unload(model)
        return {"name": model, "unload": True}

    async def model_ready(request: Request, model: str, version: str | None) -> JSON:
        ok = served_v2.is_ready(registry, model, version)
        return JSON({"name": model, "ready": ok}, status_code=200 if ok else 503)

    async def model_metadata(request: Request, model: str, version: str | None) -> dict:
        return served_v2.metadata(registry, served_v2.described(registry, model, version))

    async def infer(request: Request, model: str, version: str | None) -> Response:
        call = replace(call_of(request, settings.timeout), version=version)
        found = predictor.served(model, call)
        body = await read_body(request, call.deadline)
        header, binary = v2.split_body(body, request.headers.get(_HEADER))
        if request.headers.get(_HEADER) == "0":  # raw: batch 1, every output binary
            inference = v2.InferenceRequest(inputs=[], parameters={"binary_data_output": True})
            rows = served_v2.raw_rows(found, bytes(binary))
        else:
            inference = v2.parse_request(header)
            rows = served_v2.rows(found, v2.decode_inputs(inference, binary))
        wanted = served_v2.wanted_outputs(
            found, [(o.name, o.parameters or {}) for o in inference.outputs or []] or None,
            bool((inference.parameters or {}).get("binary_data_output", False)))
        try:
            result = await predictor.infer(found, rows, call)
        except ModelhostError as exc:
            metrics.requests.labels(model, "v2_infer", str(exc.status)).inc()
            raise
        metrics.requests.labels(model, "v2_infer", "200").inc()
        values = served_v2.output_values(found, wanted, result.outputs)
        return _response(found, inference.id, wanted, values, result)

    for path, endpoint in (("/models/{model}", at_model),
                           ("/models/{model}/versions/{version}", at_version)):
        api.add_api_route(f"{path}/ready", endpoint(model_ready), methods=["GET"],
                          summary="Model ready (503 when not)", response_model=v2.ModelReady)
        api.add_api_route(path, endpoint(model_metadata), methods=["GET"],
                          summary="Model metadata", response_model=v2.ModelMetadata)
        api.add_api_route(f"{path}/infer", endpoint(infer), methods=["POST"],
                          summary="Inference", response_model=v2.InferenceResponse,
                          openapi_extra=INFER_BODY, responses=BINARY_RESPONSE)
    return api


def _controlled(control: ModelControl | None) -> ModelControl:
    """``control``, or 403 when the server was started without ``--model-control``."""
    if control is None:
        raise Forbidden("loading and unloading models is off (serve --model-control)")
    return control


def at_model(handler):
    """``handler`` at a path without a version: the served one."""

    async def endpoint(request: Request, model: str):
        return await handler(request, model, None)

    endpoint.__name__ = handler.__name__
    return endpoint


def at_version(handler):
    """``handler`` at a path naming a version."""

    async def endpoint(request: Request, model: str, version: str):
        return await handler(request, model, version)

    endpoint.__name__ = f"{handler.__name__}_version"
    return endpoint


_INDEX_STATE = {ModelState.READY: "READY", ModelState.LOADING: "LOADING",
                ModelState.FAILED: "UNAVAILABLE", ModelState.REMOVED: "UNAVAILABLE"}


def _index_entry(model: ServedModel) -> dict:
    state = _INDEX_STATE[model.state]
    return {"name": model.spec.name, "version": model.spec.version, "state": state,
            "reason": model.error or ""}


def _response(model: ServedModel, request_id: str | None, wanted: list[served_v2.Wanted],
              values: list, result: Inference) -> Response:
    """JSON, or a JSON header followed by binary outputs (Triton's extension); the
    prediction ids (one per row, for feedback) in ``parameters`` and ``X-Prediction-Id``."""
    entries, blobs = [], []
    for want, value in zip(wanted, values, strict=True):
        entry, blob = v2.encode_output(want.name, value, want.binary)
        entries.append(entry)
        blobs.append(blob)
    body: dict = {"model_name": model.spec.name, "model_version": model.spec.version,
                  "parameters": {"prediction_id": result.ids}, "outputs": entries}
    if request_id is not None:
        body["id"] = request_id
    head = bytes(JSON(body).body)
    ids = {"X-Prediction-Id": result.ids}
    if not any(blobs):
        return Response(head, media_type="application/json", headers=ids)
    return Response(head + b"".join(blobs), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(head)), **ids})
