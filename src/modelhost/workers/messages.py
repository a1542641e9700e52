"""The typed process boundary between the server and its workers.

A frame is ``[4-byte header length][pickled header dataclass][raw payload]``: the small header
is pickled; the payload (a batch's encoded images, or a result tensor) travels as raw bytes and
is read without a copy (``np.frombuffer``/``memoryview``). Errors cross as ``(code, message)``
records, never as pickled exception objects.
"""

from __future__ import annotations

import pickle
import struct
from dataclasses import dataclass

import numpy as np

from ..types import ModelInfo, ModelSpec, Region

_LEN = struct.Struct("<I")


@dataclass(frozen=True)
class Start:
    """Server → worker, first frame: which model to load and with how many threads."""

    spec: ModelSpec
    threads: int
    max_pixels: int
    memory_limit: int | None = None  # bytes of address space (RLIMIT_AS), set before loading
    hash_inputs: bool = False  # SHA-256 of each input, for the prediction log (off without one)
    verbose: bool = False  # let the frameworks' start-up messages through (serve --log-level debug)


@dataclass(frozen=True)
class Ready:
    """Worker → server: the model is loaded and warmed up."""

    info: ModelInfo
    load_seconds: float
    pid: int


@dataclass(frozen=True)
class LoadFailed:
    """Worker → server: the model could not be loaded; the worker exits after sending it."""

    code: str
    message: str


@dataclass(frozen=True)
class RawTensor:
    """Marks an item whose bytes are a ready input row (C order, no batch axis) of this dtype
    and shape, sent by a tensor protocol (V2, TF Serving); the worker skips image decoding."""

    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Item:
    """One input of a batch: its bytes are ``payload[start:end]``; ``region`` is where to look
    in an encoded image, or a :class:`RawTensor` for a ready tensor row."""

    start: int
    end: int
    region: Region | RawTensor


@dataclass(frozen=True)
class Batch:
    """Server → worker: decode and run these images (payload follows, or lies in ``shm``)."""

    batch_id: int
    items: tuple[Item, ...]
    shm: str = ""


@dataclass(frozen=True)
class Result:
    """Worker → server: output rows for the items listed in ``ok`` (tensor follows), and a
    ``(index, code, message)`` record for each item that could not be decoded."""

    batch_id: int
    dtype: str
    shape: tuple[int, ...]
    ok: tuple[int, ...]
    errors: tuple[tuple[int, str, str], ...]
    decode_ms: tuple[float, ...]
    inference_ms: float
    sha256: tuple[str, ...] = ()  # each item's input digest, for the prediction log


@dataclass(frozen=True)
class BatchFailed:
    """Worker → server: this batch failed; the worker stays up."""

    batch_id: int
    code: str
    message: str


@dataclass(frozen=True)
class Stop:
    """Server → worker: finish and exit."""


Message = Start | Ready | LoadFailed | Batch | Result | BatchFailed | Stop


def encode(header: Message, payload: bytes | np.ndarray | None = None) -> bytes:
    """One frame: the header, then the payload's raw bytes if any."""
    head = pickle.dumps(header, protocol=pickle.HIGHEST_PROTOCOL)
    body: bytes | memoryview = b""
    if isinstance(payload, np.ndarray):
        body = np.ascontiguousarray(payload).reshape(-1).view(np.uint8).data
    elif payload:
        body = payload
    return b"".join((_LEN.pack(len(head)), head, body))


def decode(frame: bytes) -> tuple[Message, memoryview]:
    """Split a frame into its header and a zero-copy view of its payload."""
    (size,) = _LEN.unpack_from(frame)
    header = pickle.loads(frame[_LEN.size : _LEN.size + size])
    return header, memoryview(frame)[_LEN.size + size :]


def tensor(header: Result, payload: memoryview) -> np.ndarray:
    """The result tensor a Result frame carries."""
    return np.frombuffer(payload, dtype=header.dtype).reshape(header.shape)
