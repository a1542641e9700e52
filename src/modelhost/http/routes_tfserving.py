"""The TensorFlow Serving REST API under /v1/models (PROTOCOLS.md §4.3).

Every served version answers at ``/versions/N``, and every label of the model's ``[versions]``
at ``/labels/{label}`` (``latest`` is the highest served); a path naming neither goes where the
model's routing sends it (metadata: its default version), and status lists every served version
with its state. Its one signature is ``serving_default`` (predict); ``:classify`` ranks the model's
labels by probability, as the native API does.
"""

from __future__ import annotations

from dataclasses import replace

from fastapi import APIRouter, Request
from starlette.responses import Response

from ..errors import InvalidInput, ModelhostError, NotFound
from ..metrics import Metrics
from ..predictor import Call, Inference, Predictor
from ..protocols import tfserving as tfs
from ..protocols.rows import (
    batched,
    image_rows,
    model_input,
    model_output,
    shaped_output,
    tensor_rows,
)
from ..protocols.v2 import ProtocolError
from ..registry import ModelState, RegistryView, ServedModel
from ..routing import labelled
from ..settings import Settings
from .parse import call_of, read_body
from .schemas import Responses, documented

_ERRORS: Responses = {status: {"model": ProtocolError} for status in (400, 404, 503)}


def _body_doc(model: type) -> dict:
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


_STATUS = {ModelState.READY: "AVAILABLE", ModelState.LOADING: "LOADING",
           ModelState.FAILED: "END", ModelState.REMOVED: "END"}


def router(registry: RegistryView, predictor: Predictor, metrics: Metrics,
           settings: Settings) -> APIRouter:
    api = APIRouter(prefix="/v1/models", tags=["tensorflow serving"],
                    responses=_ERRORS)

    def named(name: str, version: str | None, label: str | None) -> str | None:
        """The version a path names (None: none named); TF Serving's own 404 texts for a
        version or label it does not serve."""
        if version is not None and version not in registry.versions(name):
            raise NotFound(f"Servable not found for request: Specific({name}, {version})")
        if label is not None:
            version = labelled(registry.policy(name), label)
            if version is None:
                raise NotFound(f"Unrecognized servable version label: {label}")
        return version

    def served(name: str, version: str | None, label: str | None,
               call: Call | None = None) -> ServedModel:
        """The version that answers: the one named, else the routing's choice for ``call``
        (metadata, without a call: the default version)."""
        named_version = named(name, version, label)
        if call is None:
            return registry.served(name, named_version or registry.policy(name).default)
        return predictor.served(name, replace(call, version=named_version))

    async def status(request: Request, model: str, version: str | None,
                     label: str | None) -> dict:
        named_version = named(model, version, label)
        return {"model_version_status": [
            _version_status(m) for v, m in registry.versions(model).items()
            if named_version in (None, v)]}

    async def metadata(request: Request, model: str, version: str | None,
                       label: str | None) -> dict:
        found = served(model, version, label)
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

    async def run(found: ServedModel, batch: tfs.Batch, call: Call, route: str) -> Inference:
        if batch.tensor is not None:
            rows = tensor_rows(found, model_input(found).name, batch.tensor)
        else:
            assert batch.images is not None  # a Batch holds one or the other
            rows = image_rows(batch.images)
        try:
            result = await predictor.infer(found, rows, call)
        except ModelhostError as exc:
            metrics.requests.labels(found.spec.name, route, str(exc.status)).inc()
            raise
        metrics.requests.labels(found.spec.name, route, "200").inc()
        return result

    async def predict(request: Request, model: str, version: str | None,
                      label: str | None) -> Response:
        call = call_of(request, settings.timeout)
        found = served(model, version, label, call)
        body = tfs.loads(await read_body(request, call.deadline))
        batch, rows_format = tfs.predict_batch(body, model_input(found).name)
        result = await run(found, batch, call, "tfs_predict")
        key = "predictions" if rows_format else "outputs"
        return _answer({key: shaped_output(found, result.outputs).tolist()}, result)

    async def classify(request: Request, model: str, version: str | None,
                       label: str | None) -> Response:
        call = call_of(request, settings.timeout)
        found = served(model, version, label, call)
        body = tfs.loads(await read_body(request, call.deadline))
        result = await run(found, tfs.classify_batch(body), call, "tfs_classify")
        return _answer({"results": [[[t.label, t.score] for t in p.labels]
                                    for p in result.predictions]}, result)

    async def regress(request: Request, model: str, version: str | None, label: str | None):
        named(model, version, label)
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


def _version_status(model: ServedModel) -> dict:
    error = ({"error_code": "UNKNOWN", "error_message": model.error} if model.error
             else {"error_code": "OK", "error_message": ""})
    return {"version": model.spec.version, "state": _STATUS[model.state], "status": error}


def _answer(body: dict, result: Inference) -> Response:
    """TF Serving's JSON, with the prediction ids (for feedback) in ``X-Prediction-Id`` and
    the version that answered in ``X-Model-Version`` (the body has no place for either)."""
    version = result.predictions[0].version if result.predictions else ""
    return Response(tfs.dumps(body), media_type="application/json",
                    headers={"X-Prediction-Id": result.ids, "X-Model-Version": version})


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
