"""V2 semantics on a served model, shared by the REST and gRPC transports: which version
answers, metadata, the request's input as model rows, and the requested outputs.

Every served version of a model answers when named; a request naming none goes where the
model's routing sends it (``Registry.served``). Versions in the folder that are not served exist
but are not ready. A model has one input and one output (what the runtimes run).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InvalidInput, NotFound
from ..registry import ModelState, RegistryView, ServedModel
from . import v2
from .rows import (
    Row,
    batched,
    image_rows,
    model_input,
    model_output,
    row_shape,
    shaped_output,
    tensor_rows,
)

PLATFORMS = {"onnx": "onnxruntime_onnx"}


@dataclass(frozen=True)
class Wanted:
    """One requested output: as raw values, or as the top ``classification`` classes."""

    name: str
    classification: int | None = None
    binary: bool = False


def is_ready(registry: RegistryView, name: str, version: str | None) -> bool:
    """Model (or version) readiness; 404 for a model or version the repository does not
    have. A version in the folder but not served is not ready; without a version, every
    served version must be."""
    served = registry.versions(name)
    if version and version not in registry.model(name).spec.versions:
        raise NotFound(f"model {name!r} has no version {version!r}")
    return all(m.state is ModelState.READY and m.workers_ready > 0
               for v, m in served.items() if not version or v == version) \
        and (not version or version in served)


def described(registry: RegistryView, name: str, version: str | None) -> ServedModel:
    """The version metadata describes: the one named, else the model's default version."""
    return registry.served(name, version or registry.policy(name).default)


def metadata(registry: RegistryView, model: ServedModel) -> dict:
    """V2 model metadata; ``versions`` lists the served versions (those a request may name)."""
    tensor_in, tensor_out = model_input(model), model_output(model)
    return {
        "name": model.spec.name,
        "versions": list(registry.versions(model.spec.name)),
        "platform": PLATFORMS.get(model.spec.format, model.spec.format),
        "inputs": [{"name": tensor_in.name, "datatype": v2.datatype_of(tensor_in.dtype),
                    "shape": batched(tensor_in.shape)}],
        "outputs": [{"name": tensor_out.name, "datatype": v2.datatype_of(tensor_out.dtype),
                     "shape": batched(tensor_out.shape)}],
    }


def rows(model: ServedModel, tensors: list[v2.Tensor]) -> list[Row]:
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


def raw_rows(model: ServedModel, body: bytes) -> list[Row]:
    """A raw request's body: one row of the model's input when its size fits, else an image."""
    assert model.prep is not None
    shape = row_shape(model)
    dtype = np.dtype(model.prep.dtype)
    if len(body) == int(np.prod(shape)) * dtype.itemsize:
        return tensor_rows(model, model_input(model).name,
                           np.frombuffer(body, dtype=dtype).reshape(1, *shape))
    if not body:
        raise InvalidInput("the raw request body is empty")
    return image_rows([body])


def wanted_outputs(model: ServedModel, requested: list[tuple[str, dict]] | None,
                   binary_default: bool) -> list[Wanted]:
    """The outputs asked for (name, parameters), checked before the model runs."""
    name = model_output(model).name
    wanted = []
    for asked, params in requested or [(name, {})]:
        if asked != name:
            raise InvalidInput(f"unknown output {asked!r}; the model's output is {name!r}")
        k = params.get("classification")
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise InvalidInput("classification must be a positive integer")
        wanted.append(Wanted(name, k, bool(params.get("binary_data", binary_default))))
    return wanted


def output_values(model: ServedModel, wanted: list[Wanted],
                  rows_out: np.ndarray) -> list[np.ndarray]:
    """Each wanted output's tensor from the worker's rows."""
    output = shaped_output(model, rows_out)
    return [
        v2.classify(rows_out, w.classification, model.spec.labels) if w.classification
        else output
        for w in wanted
    ]
