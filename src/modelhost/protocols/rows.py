"""Between a protocol's tensors and a served model's rows, for every tensor protocol.

A model serves its first input and first output (what the runtimes run). An input tensor is
either encoded images (BYTES: one JPEG/PNG per element, decoded by the model's own
preprocessing in its worker, exactly like an upload) or ready rows of the model's input shape.
Each row joins the model's batcher on its own, so protocol requests batch with all others.
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidInput
from ..preprocessing import tensor_shape
from ..registry import ServedModel
from ..types import Region, TensorSpec
from ..workers.messages import RawTensor

Row = tuple[bytes, Region | RawTensor]


def model_input(model: ServedModel) -> TensorSpec:
    assert model.info is not None
    return model.info.inputs[0]


def model_output(model: ServedModel) -> TensorSpec:
    assert model.info is not None
    return model.info.outputs[0]


def batched(shape: tuple[int, ...]) -> list[int]:
    """A tensor's shape as clients see it: the first (batch) dimension variable."""
    return [-1, *shape[1:]] if shape else []


def row_shape(model: ServedModel) -> tuple[int, ...]:
    """The shape of one input row: the model's, with variable sizes fixed by preprocessing."""
    assert model.prep is not None
    return tensor_shape(model.prep, 1)[1:]


def image_rows(images: list[bytes]) -> list[Row]:
    """Encoded images, each decoded in the worker with the model's preprocessing."""
    return [(data, Region()) for data in images]


def tensor_rows(model: ServedModel, name: str, array: np.ndarray) -> list[Row]:
    """Ready rows: ``array`` must be (batch, *row shape) of a type castable to the model's."""
    expected = row_shape(model)
    assert model.prep is not None
    if array.ndim != len(expected) + 1 or tuple(array.shape[1:]) != expected:
        raise InvalidInput(f"input {name!r}: shape {list(array.shape)} does not match the "
                           f"model's {[-1, *expected]}")
    if not np.can_cast(array.dtype, model.prep.dtype, "same_kind"):
        raise InvalidInput(f"input {name!r}: {array.dtype} data cannot feed the model's "
                           f"{model.prep.dtype} input")
    if array.shape[0] == 0:
        raise InvalidInput(f"input {name!r}: the batch is empty")
    array = np.ascontiguousarray(array)
    kind = RawTensor(array.dtype.str, expected)
    return [(row.tobytes(), kind) for row in array]


def shaped_output(model: ServedModel, rows: np.ndarray) -> np.ndarray:
    """The worker's flat float32 rows in the model output's shape and dtype."""
    spec = model_output(model)
    tail = spec.shape[1:]
    if tail and all(d > 0 for d in tail) and int(np.prod(tail)) == rows.shape[1]:
        rows = rows.reshape(rows.shape[0], *tail)
    if spec.dtype != "float32" and spec.dtype in ("float16", "float64", "int32", "int64",
                                                   "uint8", "int8", "bool"):
        rows = rows.astype(spec.dtype)
    return rows
