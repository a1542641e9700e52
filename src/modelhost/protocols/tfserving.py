"""The TensorFlow Serving REST API's messages (PROTOCOLS.md §4.3), independent of the transport.

Bodies are read with the standard library's JSON parser because TF Serving's clients send the
non-standard tokens ``NaN``, ``Infinity`` and ``-Infinity`` (orjson rejects them), and written
the same way so that such values come back as TF Serving writes them. Binary values are
``{"b64": "..."}``; for an image model each one is an encoded image.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from ..errors import InvalidInput, MalformedRequest

SIGNATURE = "serving_default"
_DTYPES = {
    "float32": "DT_FLOAT", "float64": "DT_DOUBLE", "float16": "DT_HALF", "uint8": "DT_UINT8",
    "int8": "DT_INT8", "int32": "DT_INT32", "int64": "DT_INT64", "bool": "DT_BOOL",
    "string": "DT_STRING",
}


class PredictRequest(BaseModel):
    signature_name: str | None = None
    instances: Any = Field(None, description="Row format: a list of examples.")
    inputs: Any = Field(None, description="Columnar format: a tensor, or name → tensor.")


class ClassifyRequest(BaseModel):
    signature_name: str | None = None
    context: dict[str, Any] | None = None
    examples: list[dict[str, Any]]


class VersionStatus(BaseModel):
    version: str
    state: str
    status: dict[str, str]


class ModelStatus(BaseModel):
    model_version_status: list[VersionStatus]


class ModelMetadata(BaseModel):
    model_spec: dict[str, str]
    metadata: dict[str, Any] = Field(description="{signature_def: {signature_def: {...}}}")


class PredictResponse(BaseModel):
    predictions: Any = Field(None, description="Row-format answer: one value per instance.")
    outputs: Any = Field(None, description="Columnar answer: the output tensor.")


class ClassifyResponse(BaseModel):
    results: list[list[tuple[str, float]]]


@dataclass
class Batch:
    """A request's input: encoded images, or a tensor whose first axis is the batch."""

    images: list[bytes] | None = None
    tensor: np.ndarray | None = None


def loads(body: bytes) -> dict:
    """A request body as a JSON object (NaN/Infinity tokens accepted)."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested too deep to be a tensor
        raise MalformedRequest("the request body is not valid JSON") from None
    if not isinstance(value, dict):
        raise InvalidInput("the request body must be a JSON object")
    return value


def dumps(value: Any) -> bytes:
    """JSON as TF Serving writes it (NaN and Infinity as bare tokens)."""
    return json.dumps(value, separators=(",", ":")).encode()


def check_signature(name: str | None) -> None:
    if name not in (None, "", SIGNATURE):
        raise InvalidInput(f"Serving signature name: {name!r} not found in signature def; "
                           f"this model has only {SIGNATURE!r}")


def predict_batch(request: dict, input_name: str) -> tuple[Batch, bool]:
    """The batch of a predict request, and whether it used the row (``instances``) format."""
    check_signature(request.get("signature_name"))
    has_rows, has_columns = "instances" in request, "inputs" in request
    if has_rows == has_columns:
        raise InvalidInput("the request must have exactly one of 'instances' or 'inputs'")
    if has_rows:
        instances = request["instances"]
        if not isinstance(instances, list) or not instances:
            raise InvalidInput("'instances' must be a non-empty list")
        return to_batch([_named(i, input_name) for i in instances]), True
    columns = request["inputs"]
    if isinstance(columns, dict) and "b64" not in columns:
        columns = _named(columns, input_name)
    if _is_b64(columns):
        columns = [columns]
    if not isinstance(columns, list) or not columns:
        raise InvalidInput("'inputs' must be a non-empty batch")
    return to_batch(columns), False


def classify_batch(request: dict) -> Batch:
    """The batch of a classify request: each example (with the shared context) holds one
    feature, an image ``{"b64": ...}`` or a tensor row."""
    check_signature(request.get("signature_name"))
    examples, context = request.get("examples"), request.get("context") or {}
    if not isinstance(examples, list) or not examples or not isinstance(context, dict):
        raise InvalidInput("'examples' must be a non-empty list of objects")
    values = []
    for example in examples:
        if not isinstance(example, dict):
            raise InvalidInput("each example must be an object of features")
        features = {**context, **example}
        if len(features) != 1:
            raise InvalidInput(f"an example must have exactly one feature, got {list(features)}")
        values.append(next(iter(features.values())))
    return to_batch(values)


def _named(value: Any, input_name: str) -> Any:
    """An instance given as an object of named inputs: the model's one input."""
    if not isinstance(value, dict) or "b64" in value:
        return value
    if set(value) != {input_name}:
        raise InvalidInput(f"unknown inputs {sorted(value)}; the model's input is "
                           f"{input_name!r}")
    return value[input_name]


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"b64"}


def to_batch(values: list) -> Batch:
    """Per-example values: all images, or all tensor rows."""
    if all(_is_b64(v) for v in values):
        return Batch(images=[_b64(v["b64"]) for v in values])
    if any(_is_b64(v) for v in values):
        raise InvalidInput("a batch mixes {\"b64\": ...} images with tensors")
    try:
        array = np.asarray(values)
    except (ValueError, TypeError):
        raise InvalidInput("the examples are not a regular tensor") from None
    if array.dtype.kind not in "biuf":
        raise InvalidInput("the examples must be numbers (or {\"b64\": ...} images)")
    return Batch(tensor=array)


def _b64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise InvalidInput("'b64' must be a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("'b64' is not valid base64") from None


def tensor_info(name: str, dtype: str, shape: tuple[int, ...]) -> dict:
    """A TensorInfo as TF Serving's metadata writes it (dim sizes are strings)."""
    return {"dtype": _DTYPES.get(dtype, "DT_INVALID"), "name": name,
            "tensor_shape": {"dim": [{"size": str(d), "name": ""} for d in shape],
                             "unknown_rank": False}}
