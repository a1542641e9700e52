"""The TensorFlow Serving REST API under /v1/models (PROTOCOLS.md §4.3).

A model serves one version (its highest); ``/versions/N`` must name it, and the only label is
``latest``. Its one signature is ``serving_default`` (predict); ``:classify`` ranks the model's
labels by probability, as the native API does.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from ..errors import InvalidInput, ModelhostError, NotFound, Unavailable
from ..metrics import Metrics
from ..postprocess import probabilities, top_k
from ..protocols import tfserving as tfs
from ..protocols.rows import (
    Row,
    batched,
    image_rows,
    model_input,
    model_output,
    shaped_output,
    tensor_rows,
)
from ..protocols.v2 import ProtocolError
from ..service import PredictionService, ServedModel
from ..settings import Settings
from .errors import request_id_of
from .parse import deadline_for
from .protocol_errors import ProtocolRoute, read_body
from .schemas import documented

LATEST = "latest"
_ERRORS = {status: {"model": ProtocolError} for status in (400, 404, 503)}


def _body_doc(model: type) -> dict:
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


def router(service: PredictionService, metrics: Metrics, settings: Settings) -> APIRouter:
    api = APIRouter(prefix="/v1/models", tags=["tensorflow serving"], route_class=ProtocolRoute,
                    responses=_ERRORS)

    def served(name: str, version: str | None, label: str | None) -> ServedModel:
        model = service.model(name)
        if version is not None and version != model.spec.version:
            raise NotFound(f"Servable not found for request: Specific({name}, {version})")
        if label is not None and label != LATEST:
            raise NotFound(f"Unrecognized servable version label: {label}")
        return model

    def ready(model: ServedModel) -> ServedModel:
        if model.state != "ready" or model.info is None:
            raise Unavailable(f"model {model.spec.name!r} is not ready", "not_ready")
        return model

    async def status(request: Request, model: str, version: str | None,
                     label: str | None) -> dict:
        found = served(model, version, label)
        state = {"ready": "AVAILABLE", "loading": "LOADING", "failed": "END"}[found.state]
        error = ({"error_code": "UNKNOWN", "error_message": found.error} if found.error
                 else {"error_code": "OK", "error_message": ""})
        return {"model_version_status": [
            {"version": found.spec.version, "state": state, "status": error}]}

    async def metadata(request: Request, model: str, version: str | None,
                       label: str | None) -> dict:
        found = ready(served(model, version, label))
        tensor_in, tensor_out = model_input(found), model_output(found)
        signature = {
            "inputs": {tensor_in.name: tfs.tensor_info(tensor_in.name, tensor_in.dtype,
                                                       tuple(batched(tensor_in.shape)))},
            "outputs": {tensor_out.name: tfs.tensor_info(tensor_out.name, tensor_out.dtype,
                                                         tuple(batched(tensor_out.shape)))},
            "method_name": "tensorflow/serving/predict",
        }
        return {"model_spec": {"name": model, "signature_name": "",
                               "version": found.spec.version},
                "metadata": {"signature_def": {"signature_def": {tfs.SIGNATURE: signature}}}}

    async def run(request: Request, found: ServedModel, batch: tfs.Batch, route: str):
        rows: list[Row] = (image_rows(batch.images) if batch.images is not None else
                           tensor_rows(found, model_input(found).name, batch.tensor))
        deadline = deadline_for(request, settings.timeout)
        try:
            output = await service.infer(found.spec.name, rows, deadline,
                                         request_id_of(request))
        except ModelhostError as exc:
            metrics.requests.labels(found.spec.name, route, str(exc.status)).inc()
            raise
        metrics.requests.labels(found.spec.name, route, "200").inc()
        return output

    async def predict(request: Request, model: str, version: str | None,
                      label: str | None) -> Response:
        found = ready(served(model, version, label))
        body = tfs.loads(await read_body(request, deadline_for(request, settings.timeout)))
        batch, rows_format = tfs.predict_batch(body, model_input(found).name)
        output = shaped_output(found, await run(request, found, batch, "tfs_predict"))
        key = "predictions" if rows_format else "outputs"
        return Response(tfs.dumps({key: output.tolist()}), media_type="application/json")

    async def classify(request: Request, model: str, version: str | None,
                       label: str | None) -> Response:
        found = ready(served(model, version, label))
        body = tfs.loads(await read_body(request, deadline_for(request, settings.timeout)))
        output = await run(request, found, tfs.classify_batch(body), "tfs_classify")
        kind, k = found.spec.config.output_kind, found.spec.config.top_k
        results = [[[t.label, t.score] for t in top_k(probabilities(row, kind),
                                                       found.spec.labels, k)]
                   for row in output]
        return Response(tfs.dumps({"results": results}), media_type="application/json")

    async def regress(request: Request, model: str, version: str | None, label: str | None):
        served(model, version, label)
        raise InvalidInput("Expected regression signature method_name to be "
                           "tensorflow/serving/regress; this model classifies")

    for path, endpoint in (("/{model}", at_model), ("/{model}/versions/{version}", at_version),
                           ("/{model}/labels/{label}", at_label)):
        api.add_api_route(path, endpoint(status), methods=["GET"], summary="Model status",
                          **documented(tfs.ModelStatus))
        api.add_api_route(f"{path}/metadata", endpoint(metadata), methods=["GET"],
                          summary="Model metadata (signature_def)",
                          **documented(tfs.ModelMetadata))
        api.add_api_route(f"{path}:predict", endpoint(predict), methods=["POST"],
                          summary="Predict", openapi_extra=_body_doc(tfs.PredictRequest),
                          **documented(tfs.PredictResponse))
        api.add_api_route(f"{path}:classify", endpoint(classify), methods=["POST"],
                          summary="Classify", openapi_extra=_body_doc(tfs.ClassifyRequest),
                          **documented(tfs.ClassifyResponse))
        api.add_api_route(f"{path}:regress", endpoint(regress), methods=["POST"],
                          summary="Regress (not supported by classifiers)")
    return api


def at_model(handler):
    """``handler`` at a path without a version or label: the served version."""

    async def endpoint(request: Request, model: str):
        return await handler(request, model, None, None)

    endpoint.__name__ = handler.__name__
    return endpoint


def at_version(handler):
    async def endpoint(request: Request, model: str, version: str):
        return await handler(request, model, version, None)

    endpoint.__name__ = f"{handler.__name__}_version"
    return endpoint


def at_label(handler):
    async def endpoint(request: Request, model: str, label: str):
        return await handler(request, model, None, label)

    endpoint.__name__ = f"{handler.__name__}_label"
    return endpoint
