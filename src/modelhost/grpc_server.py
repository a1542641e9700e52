"""KServe V2 over gRPC (``--grpc-port``), with the same semantics as /v2 over REST.

The service definition comes from ``protocols/v2_grpc.py`` (compiled at first use into a
descriptor pool of its own, so V2 client libraries can share the process).
The server runs on the HTTP server's event loop and shares its registry and predictor: gRPC
rows go through the same run step and join the same batches, and each response carries its
prediction ids in ``parameters["prediction_id"]`` for feedback. Tensors come as
``raw_input_contents`` or typed ``contents``; outputs go back as ``raw_output_contents`` (what
Triton and its clients use). A client's deadline shortens the request's; errors become gRPC
status codes.

API keys and rate limits apply here too, through the interceptor in grpc_guard.py.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
from typing import Any

import grpc
from grpc import aio

from . import __version__
from .errors import InvalidInput, ModelhostError
from .grpc_guard import Guard, client_name
from .metrics import Metrics
from .predictor import Call, Predictor
from .protocols import v2, v2_grpc
from .protocols import v2_model as served_v2
from .registry import RegistryView
from .settings import Settings

log = logging.getLogger("modelhost.grpc")

_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT, 422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED, 503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
# Typed contents: which repeated field holds each datatype.
_CONTENTS = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
    "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


class GrpcServer:
    """The gRPC endpoint's lifecycle: start on the running loop, stop with a grace period."""

    def __init__(self, registry: RegistryView, predictor: Predictor, metrics: Metrics,
                 settings: Settings, guard: Guard) -> None:
        self._registry = registry
        self._predictor = predictor
        self._guard = guard
        self._metrics = metrics
        self._settings = settings
        self._server: aio.Server | None = None
        self.port: int | None = None

    async def start(self) -> int:
        limit = self._settings.max_body
        self._server = aio.server(interceptors=[self._guard],
                                  options=[("grpc.max_receive_message_length", limit),
                                           ("grpc.max_send_message_length", limit)])
        self._server.add_generic_rpc_handlers((v2_grpc.handler(_Servicer(
            v2_grpc.messages(), self._registry, self._predictor, self._metrics,
            self._settings)),))
        address = f"{self._settings.host}:{self._settings.grpc_port}"
        self.port = self._server.add_insecure_port(address)
        await self._server.start()
        log.info("gRPC listening on %s:%s", self._settings.host, self.port)
        return self.port

    async def stop(self, grace: float) -> None:
        if self._server is not None:
            await self._server.stop(grace)


class _Servicer:
    """GRPCInferenceService: the compiled service dispatches to these methods by their .proto
    names."""

    def __init__(self, protos, registry: RegistryView, predictor: Predictor, metrics: Metrics,
                 settings: Settings) -> None:
        self._pb = protos
        self._registry = registry
        self._predictor = predictor
        self._metrics = metrics
        self._timeout = settings.timeout

    async def ServerLive(self, request, context):
        return self._pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return self._pb.ServerReadyResponse(ready=self._registry.readiness()[0])

    async def ServerMetadata(self, request, context):
        return self._pb.ServerMetadataResponse(name="modelhost", version=__version__,
                                               extensions=v2.EXTENSIONS)

    async def ModelReady(self, request, context):
        ready = await _answer(context, served_v2.is_ready, self._registry, request.name,
                              request.version)
        return self._pb.ModelReadyResponse(ready=ready)

    async def ModelMetadata(self, request, context):
        found = await _answer(context, served_v2.described, self._registry, request.name,
                              request.version)
        meta = served_v2.metadata(self._registry, found)
        tensor = self._pb.ModelMetadataResponse.TensorMetadata
        return self._pb.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"],
            inputs=[tensor(**t) for t in meta["inputs"]],
            outputs=[tensor(**t) for t in meta["outputs"]])

    async def ModelInfer(self, request, context):
        name = request.model_name
        try:
            response = await self._infer(request, context)
        except ModelhostError as exc:
            self._metrics.requests.labels(name if name in self._registry.models else "",
                                          "v2_grpc_infer", str(exc.status)).inc()
            await context.abort(_STATUS.get(exc.status, grpc.StatusCode.INTERNAL), exc.message)
        self._metrics.requests.labels(name, "v2_grpc_infer", "200").inc()
        return response

    async def _infer(self, request, context):
        remaining = context.time_remaining()
        timeout = min(self._timeout, remaining) if remaining is not None else self._timeout
        deadline = asyncio.get_running_loop().time() + timeout
        call = Call(deadline, _request_id(context), client_name.get(), bench=_is_bench(context),
                    version=request.model_version or None, peer=_peer(context))
        found = self._predictor.served(request.model_name, call)
        rows = served_v2.rows(found, _inputs(request))
        wanted = served_v2.wanted_outputs(
            found, [(o.name, _parameters(o.parameters)) for o in request.outputs] or None,
            binary_default=True)
        result = await self._predictor.infer(found, rows, call)
        values = served_v2.output_values(found, wanted, result.outputs)
        response = self._pb.ModelInferResponse(model_name=found.spec.name,
                                               model_version=found.spec.version,
                                               id=request.id)
        response.parameters["prediction_id"].string_param = result.ids
        for want, value in zip(wanted, values, strict=True):
            entry, blob = v2.encode_output(want.name, value, binary=True)
            response.outputs.add(name=entry["name"], datatype=entry["datatype"],
                                 shape=entry["shape"])
            response.raw_output_contents.append(blob)
        return response


async def _answer(context, function, *args) -> Any:
    """``function(*args)``, with a ModelhostError turned into the call's gRPC status."""
    try:
        return function(*args)
    except ModelhostError as exc:
        await context.abort(_STATUS.get(exc.status, grpc.StatusCode.INTERNAL), exc.message)


def _inputs(request) -> list[v2.Tensor]:
    """Every input tensor, from ``raw_input_contents`` (in input order) or typed contents."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs")
    tensors = []
    for index, tensor in enumerate(request.inputs):
        shape = list(tensor.shape)
        if raw:
            tensors.append(v2.from_bytes(tensor.name, tensor.datatype, shape,
                                         memoryview(raw[index])))
            continue
        field = _CONTENTS.get(tensor.datatype)
        if field is None:
            raise InvalidInput(f"input {tensor.name!r}: {tensor.datatype} needs "
                               "raw_input_contents")
        values = list(getattr(tensor.contents, field))
        if tensor.datatype == "BYTES":
            if len(values) != math.prod(shape):
                raise InvalidInput(f"input {tensor.name!r}: {len(values)} elements for "
                                   f"shape {shape}")
            tensors.append(v2.Tensor(tensor.name, "BYTES", tuple(shape), values))
        else:
            tensors.append(v2.from_json(tensor.name, tensor.datatype, shape, values))
    return tensors


def _parameters(parameters) -> dict[str, Any]:
    """A protobuf parameter map as plain values."""
    values = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        values[key] = getattr(parameter, choice) if choice else None
    return values


def _request_id(context) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and isinstance(value, str) and 0 < len(value) <= 64:
            return value
    return secrets.token_hex(8)


def _peer(context) -> str | None:
    """The client's address without its port (``ipv4:127.0.0.1:5123``), for sticky routing."""
    peer = context.peer() or ""
    return peer.rpartition(":")[0] or None


def _is_bench(context) -> bool:
    """``x-modelhost-bench: 1`` metadata: load-test traffic, as the HTTP header marks it."""
    return any(key == "x-modelhost-bench" and value == "1"
               for key, value in context.invocation_metadata() or ())
