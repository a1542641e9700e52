"""KServe Open Inference Protocol V2 over REST, under /v2 (PROTOCOLS.md §4.1, §4.2).

Health answers 200 with a JSON body when true and 503 when false (probes and clients read the
status). Only the served version of a model answers; other versions of its folder exist but are
not ready. Inference accepts JSON tensors and Triton's binary sections, including the raw form
(``Inference-Header-Content-Length: 0``: the body is one input: a ready row or an image).
"""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Request
from starlette.responses import Response

from .. import __version__
from ..errors import InvalidInput, ModelhostError, NotFound, Unavailable
from ..metrics import Metrics
from ..protocols import v2
from ..protocols.rows import (
    Row,
    batched,
    image_rows,
    model_input,
    model_output,
    row_shape,
    shaped_output,
    tensor_rows,
)
from ..service import PredictionService, ServedModel
from ..settings import Settings
from .errors import request_id_of
from .parse import deadline_for
from .protocol_errors import ProtocolRoute, read_body
from .responses import JSON

_HEADER = "inference-header-content-length"
_ERRORS = {status: {"model": v2.ProtocolError} for status in (400, 404, 503)}
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
BINARY_RESPONSE = {200: {"content": {"application/octet-stream": {"schema": {
    "type": "string", "format": "binary",
    "description": "With binary outputs: the JSON response (Inference-Header-Content-Length "
                   "bytes), then the tensors."}}}}}
PLATFORMS = {"onnx": "onnxruntime_onnx"}


def router(service: PredictionService, metrics: Metrics, settings: Settings) -> APIRouter:
    api = APIRouter(prefix="/v2", tags=["kserve v2"], route_class=ProtocolRoute,
                    responses=_ERRORS)

    def served(name: str, version: str | None) -> ServedModel:
        model = service.model(name)
        if version is not None and version != model.spec.version:
            raise NotFound(f"version {version!r} of model {name!r} is not served")
        return model

    def ready(model: ServedModel) -> ServedModel:
        if model.state != "ready" or model.info is None:
            raise Unavailable(f"model {model.spec.name!r} is not ready", "not_ready")
        return model

    @api.get("", summary="Server metadata", response_model=v2.ServerMetadata)
    async def server_metadata() -> dict:
        return {"name": "modelhost", "version": __version__, "extensions": v2.EXTENSIONS}

    @api.get("/health/live", summary="Server live", response_model=v2.ServerLive)
    async def live() -> dict:
        return {"live": True}

    @api.get("/health/ready", summary="Server ready (503 when not)",
             response_model=v2.ServerReady)
    async def server_ready() -> JSON:
        is_ready, _ = service.readiness()
        return JSON({"ready": is_ready}, status_code=200 if is_ready else 503)

    @api.get("/models", summary="The served models' names")
    async def models() -> dict[str, list[str]]:
        return {"models": list(service.models)}

    @api.post("/repository/index", summary="The repository's models and their state",
              response_model=list[v2.RepositoryModel])
    async def repository_index(request: Request) -> list[dict]:
        body = await request.body()
        only_ready = bool(body) and v2.RepositoryIndexRequest.model_validate_json(body).ready
        return [_index_entry(m) for m in service.models.values()
                if not only_ready or m.state == "ready"]

    async def model_ready(request: Request, model: str, version: str | None) -> JSON:
        found = service.model(model)
        ok = (found.state == "ready" and found.pool.ready_workers > 0
              and version in (None, found.spec.version))
        if version is not None and version not in found.spec.versions:
            raise NotFound(f"model {model!r} has no version {version!r}")
        return JSON({"name": model, "ready": ok}, status_code=200 if ok else 503)

    async def model_metadata(request: Request, model: str, version: str | None) -> dict:
        found = ready(served(model, version))
        tensor_in, tensor_out = model_input(found), model_output(found)
        return {
            "name": model, "versions": list(found.spec.versions) or [found.spec.version],
            "platform": PLATFORMS.get(found.spec.format, found.spec.format),
            "inputs": [{"name": tensor_in.name, "datatype": v2.datatype_of(tensor_in.dtype),
                        "shape": batched(tensor_in.shape)}],
            "outputs": [{"name": tensor_out.name, "datatype": v2.datatype_of(tensor_out.dtype),
                         "shape": batched(tensor_out.shape)}],
        }

    async def infer(request: Request, model: str, version: str | None) -> Response:
        found = ready(served(model, version))
        deadline = deadline_for(request, settings.timeout)
        body = await read_body(request, deadline)
        header, binary = v2.split_body(body, request.headers.get(_HEADER))
        if request.headers.get(_HEADER) == "0":  # raw: batch 1, every output binary
            inference = v2.InferenceRequest(inputs=[], parameters={"binary_data_output": True})
            rows = _raw_rows(found, bytes(binary))
        else:
            inference = v2.parse_request(header)
            rows = _rows(found, v2.decode_inputs(inference, binary))
        try:
            output = await service.infer(model, rows, deadline, request_id_of(request))
        except ModelhostError as exc:
            metrics.requests.labels(model, "v2_infer", str(exc.status)).inc()
            raise
        metrics.requests.labels(model, "v2_infer", "200").inc()
        return _response(found, inference, shaped_output(found, output))

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


def _index_entry(model: ServedModel) -> dict:
    state = {"ready": "READY", "loading": "LOADING", "failed": "UNAVAILABLE"}[model.state]
    return {"name": model.spec.name, "version": model.spec.version, "state": state,
            "reason": model.error or ""}


def _rows(model: ServedModel, tensors: list[v2.Tensor]) -> list[Row]:
    """The request's one input as model rows: encoded images (BYTES) or ready rows."""
    expected = model_input(model).name
    if len(tensors) != 1 or tensors[0].name != expected:
        names = [t.name for t in tensors]
        raise InvalidInput(f"the model takes one input named {expected!r}, got {names}")
    tensor = tensors[0]
    if isinstance(tensor.value, list):
        if len(tensor.shape) > 2 or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
            raise InvalidInput(f"input {tensor.name!r}: BYTES images take shape [batch] "
                                  "or [batch, 1]")
        if not tensor.value:
            raise InvalidInput(f"input {tensor.name!r}: the batch is empty")
        return image_rows(tensor.value)
    return tensor_rows(model, tensor.name, tensor.value)


def _raw_rows(model: ServedModel, body: bytes) -> list[Row]:
    """The whole body is one row of the model's input when its size fits, else an image."""
    assert model.prep is not None
    shape = row_shape(model)
    dtype = np.dtype(model.prep.dtype)
    if len(body) == int(np.prod(shape)) * dtype.itemsize:
        array = np.frombuffer(body, dtype=dtype).reshape(1, *shape)
        return tensor_rows(model, model_input(model).name, array)
    if not body:
        raise InvalidInput("the raw request body is empty")
    return image_rows([body])


def _response(model: ServedModel, request: v2.InferenceRequest,
              output: np.ndarray) -> Response:
    """JSON, or a JSON header followed by binary outputs (Triton's extension)."""
    name = model_output(model).name
    binary_default = bool((request.parameters or {}).get("binary_data_output", False))
    wanted = request.outputs or [v2.RequestOutput(name=name)]
    entries, blobs = [], []
    for requested in wanted:
        if requested.name != name:
            raise InvalidInput(f"unknown output {requested.name!r}; the model's output is "
                                  f"{name!r}")
        params = requested.parameters or {}
        value = output
        k = params.get("classification")
        if k is not None:
            if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                raise InvalidInput("classification must be a positive integer")
            value = v2.classify(output.reshape(output.shape[0], -1), k, model.spec.labels)
        entry, blob = v2.encode_output(name, value,
                                       bool(params.get("binary_data", binary_default)))
        entries.append(entry)
        blobs.append(blob)
    body: dict = {"model_name": model.spec.name, "model_version": model.spec.version,
                  "outputs": entries}
    if request.id is not None:
        body["id"] = request.id
    head = JSON(body).body
    if not any(blobs):
        return Response(head, media_type="application/json")
    return Response(head + b"".join(blobs), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(head))})
