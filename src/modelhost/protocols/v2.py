"""The KServe Open Inference Protocol (V2) with Triton's binary tensor and classification
extensions, independent of the transport: messages as pydantic models (they are also the
OpenAPI schemas), tensors from JSON or binary sections to NumPy and back.

Tensors are row-major; a binary section is little-endian with no padding, and each BYTES
element is a 4-byte little-endian length followed by its bytes (PROTOCOLS.md §4.2). BF16 has no
NumPy type: it is widened to FP32 on the way in (exactly: the top 16 bits of an FP32).
"""

from __future__ import annotations

import base64
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from ..errors import InvalidInput, MalformedRequest

Parameters = dict[str, str | int | float | bool]

# V2 datatype → NumPy dtype (little-endian); BYTES and BF16 are handled apart.
DTYPES: dict[str, str] = {
    "BOOL": "bool", "UINT8": "u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
    "INT8": "i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
    "FP16": "<f2", "FP32": "<f4", "FP64": "<f8",
}
_NAMES = {np.dtype(v).newbyteorder("="): k for k, v in DTYPES.items()}
_LENGTH = struct.Struct("<I")


# -- messages --------------------------------------------------------------------------------

class RequestInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: Any = Field(None, description="Row-major values, nested or flat; absent when the "
                                        "tensor is in the binary section (binary_data_size).")


class RequestOutput(BaseModel):
    name: str
    parameters: Parameters | None = Field(
        None, description="binary_data (bool): return this output in the binary section; "
                          "classification (int k): return the top k as 'value:index:label'.")


class InferenceRequest(BaseModel):
    id: str | None = None
    parameters: Parameters | None = Field(
        None, description="binary_data_output (bool): every output in the binary section.")
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: list[Any] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: Parameters | None = None
    outputs: list[ResponseOutput]


class MetadataTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str] | None = None
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ServerLive(BaseModel):
    live: bool


class ServerReady(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class RepositoryIndexRequest(BaseModel):
    ready: bool = False


class RepositoryModel(BaseModel):
    name: str
    version: str | None = None
    state: str
    reason: str = ""


class RepositoryLoadRequest(BaseModel):
    """Body of ``/v2/repository/models/{m}/load`` and ``/unload``."""

    parameters: dict[str, Any] | None = None

    def supplied_model(self) -> bool:
        """Whether it carries a model of its own (Triton's ``config`` override or ``file:``
        contents), which modelhost never loads: only the repository's files are."""
        return any(key == "config" or key.startswith("file:") for key in self.parameters or {})


class RepositoryLoadResponse(BaseModel):
    name: str
    load: bool | None = None
    unload: bool | None = None


class ProtocolError(BaseModel):
    error: str


EXTENSIONS = ["binary_tensor_data", "classification", "parameters", "model_repository"]


# -- tensors ---------------------------------------------------------------------------------

@dataclass
class Tensor:
    """One decoded input: a NumPy array, or a list of byte strings for BYTES."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    value: np.ndarray | list[bytes]


def datatype_of(dtype: str) -> str:
    """The V2 name of a NumPy dtype name (as the runtimes report them); BYTES for strings."""
    if dtype in ("string", "object", "bytes"):
        return "BYTES"
    return _NAMES.get(np.dtype(dtype).newbyteorder("="), "BYTES")


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON header and the binary section of a request (Inference-Header-Content-Length)."""
    if header_length is None:
        return body, memoryview(b"")
    try:
        size = int(header_length)
    except ValueError:
        raise MalformedRequest("Inference-Header-Content-Length is not an integer") from None
    if not 0 <= size <= len(body):
        raise MalformedRequest("Inference-Header-Content-Length is outside the body")
    return body[:size], memoryview(body)[size:]


def parse_request(header: bytes) -> InferenceRequest:
    """The JSON part of an inference request, validated."""
    return _parse(InferenceRequest, header)


def parse_index_request(body: bytes) -> RepositoryIndexRequest:
    return _parse(RepositoryIndexRequest, body)


def parse_load_request(body: bytes) -> RepositoryLoadRequest:
    return _parse(RepositoryLoadRequest, body) if body.strip() else RepositoryLoadRequest()


def _parse(model: type[BaseModel], body: bytes):
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        if first["type"] == "json_invalid":
            raise MalformedRequest("the request body is not valid JSON") from None
        raise InvalidInput(f"{where}: {first['msg']}" if where else first["msg"]) from None


def decode_inputs(request: InferenceRequest, binary: memoryview) -> list[Tensor]:
    """Every input as a tensor; binary sections are consumed in input order."""
    tensors, offset = [], 0
    for item in request.inputs:
        size = (item.parameters or {}).get("binary_data_size")
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise InvalidInput(f"input {item.name!r}: binary_data_size must be an integer")
            if offset + size > len(binary):
                raise InvalidInput(f"input {item.name!r}: binary_data_size {size} exceeds the "
                                   "binary section of the body")
            tensors.append(from_bytes(item.name, item.datatype, item.shape,
                                      binary[offset : offset + size]))
            offset += size
        elif item.data is None:
            raise InvalidInput(f"input {item.name!r} has neither data nor binary_data_size")
        else:
            tensors.append(from_json(item.name, item.datatype, item.shape, item.data))
    if offset != len(binary):
        raise InvalidInput(f"the binary section has {len(binary) - offset} unread bytes")
    return tensors


def _count(name: str, shape: list[int]) -> int:
    if any(d < 0 for d in shape):
        raise InvalidInput(f"input {name!r}: shape {shape} has a negative dimension")
    return math.prod(shape)


def from_bytes(name: str, datatype: str, shape: list[int], data: memoryview) -> Tensor:
    """A tensor from its binary section."""
    count = _count(name, shape)
    if datatype == "BYTES":
        return Tensor(name, datatype, tuple(shape), _split_bytes(name, data, count))
    dtype = _numpy_dtype(name, datatype)
    if len(data) != count * dtype.itemsize:
        raise InvalidInput(f"input {name!r}: {len(data)} bytes for shape {shape} of {datatype} "
                           f"(expected {count * dtype.itemsize})")
    array = np.frombuffer(data, dtype=dtype).reshape(shape)
    return Tensor(name, datatype, tuple(shape), _widen(array, datatype))


def from_json(name: str, datatype: str, shape: list[int], data: Any) -> Tensor:
    """A tensor from JSON data, nested or flat."""
    count = _count(name, shape)
    if datatype == "BYTES":
        elements = [_element_bytes(name, e) for e in _flatten(data)]
        if len(elements) != count:
            raise InvalidInput(f"input {name!r}: {len(elements)} elements for shape {shape}")
        return Tensor(name, datatype, tuple(shape), elements)
    dtype = _numpy_dtype(name, datatype)
    target = np.float32 if datatype == "BF16" else dtype
    try:
        array = np.asarray(data, dtype=target)
    except (ValueError, TypeError, OverflowError):
        raise InvalidInput(f"input {name!r}: data is not a {datatype} tensor") from None
    if array.size != count:
        raise InvalidInput(f"input {name!r}: {array.size} elements for shape {shape}")
    return Tensor(name, datatype, tuple(shape), array.reshape(shape))


def _numpy_dtype(name: str, datatype: str) -> np.dtype:
    if datatype == "BF16":
        return np.dtype("<u2")
    if datatype not in DTYPES:
        raise InvalidInput(f"input {name!r}: unknown datatype {datatype!r}")
    return np.dtype(DTYPES[datatype])


def _widen(array: np.ndarray, datatype: str) -> np.ndarray:
    """BF16 bits → FP32 (exact); every other type as it is."""
    if datatype != "BF16":
        return array
    return (array.astype(np.uint32) << 16).view(np.float32)


def _flatten(data: Any) -> list:
    if not isinstance(data, list):
        return [data]
    out: list = []
    for element in data:
        out.extend(_flatten(element) if isinstance(element, list) else [element])
    return out


def _element_bytes(name: str, element: Any) -> bytes:
    """A BYTES element from JSON: a string (UTF-8) or ``{"b64": ...}`` for binary content."""
    if isinstance(element, str):
        return element.encode()
    if isinstance(element, dict) and isinstance(element.get("b64"), str):
        try:
            return base64.b64decode(element["b64"], validate=True)
        except ValueError:
            raise InvalidInput(f"input {name!r}: invalid base64") from None
    raise InvalidInput(f"input {name!r}: BYTES elements must be strings or {{\"b64\": ...}}")


def _split_bytes(name: str, data: memoryview, count: int) -> list[bytes]:
    elements, offset = [], 0
    while offset < len(data):
        if offset + _LENGTH.size > len(data):
            raise InvalidInput(f"input {name!r}: truncated BYTES element")
        (size,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size
        if offset + size > len(data):
            raise InvalidInput(f"input {name!r}: truncated BYTES element")
        elements.append(bytes(data[offset : offset + size]))
        offset += size
    if len(elements) != count:
        raise InvalidInput(f"input {name!r}: {len(elements)} BYTES elements for {count}")
    return elements


# -- outputs ---------------------------------------------------------------------------------

def classify(rows: np.ndarray, k: int, labels: tuple[str, ...]) -> np.ndarray:
    """Triton's classification extension: the top ``k`` raw values of each row as
    ``"value:index[:label]"`` strings, shape (batch, k)."""
    k = max(1, min(k, rows.shape[1]))
    best = np.argsort(-rows, axis=1, kind="stable")[:, :k]
    return np.array([
        [f"{row[i]:f}:{i}" + (f":{labels[i]}" if i < len(labels) else "") for i in order]
        for row, order in zip(rows, best, strict=True)
    ], dtype=object)


def encode_output(name: str, array: np.ndarray, binary: bool) -> tuple[dict, bytes]:
    """The response entry of one output and its binary section (empty when sent as JSON)."""
    is_bytes = array.dtype == object
    datatype = "BYTES" if is_bytes else datatype_of(array.dtype.name)
    entry: dict = {"name": name, "datatype": datatype, "shape": list(array.shape)}
    if not binary:
        flat = array.reshape(-1)
        entry["data"] = [str(v) for v in flat] if is_bytes else flat.tolist()
        return entry, b""
    if is_bytes:
        blob = b"".join(_LENGTH.pack(len(b)) + b for b in (str(v).encode() for v in
                                                             array.reshape(-1)))
    else:
        blob = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    entry["parameters"] = {"binary_data_size": len(blob)}
    return entry, blob
