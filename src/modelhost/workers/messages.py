"""The typed process boundary between the server and its workers.

A frame is ``[4-byte header length][pickled header dataclass][raw tensor bytes]``: the small
header is pickled, the tensor travels as its raw buffer and is rebuilt with ``np.frombuffer``
without a copy (pickling an ndarray would copy it once more). Errors cross as ``(code, message)``
records, never as pickled exception objects.
"""

from __future__ import annotations

import pickle
import struct
from dataclasses import dataclass

import numpy as np

from ..types import ModelInfo, ModelSpec

_LEN = struct.Struct("<I")


@dataclass(frozen=True)
class Start:
    """Server → worker, first frame: which model to load and with how many threads."""

    spec: ModelSpec
    threads: int


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
class Batch:
    """Server → worker: run this batch (tensor follows, or lies in shared memory ``shm``)."""

    batch_id: int
    dtype: str
    shape: tuple[int, ...]
    shm: str = ""


@dataclass(frozen=True)
class Result:
    """Worker → server: the first output of a batch (tensor follows)."""

    batch_id: int
    dtype: str
    shape: tuple[int, ...]
    inference_ms: float


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


def encode(header: Message, tensor: np.ndarray | None = None) -> bytes:
    """One frame: the header, then the tensor's raw bytes if any."""
    head = pickle.dumps(header, protocol=pickle.HIGHEST_PROTOCOL)
    body = b"" if tensor is None else memoryview(np.ascontiguousarray(tensor)).cast("B")
    return b"".join((_LEN.pack(len(head)), head, body))


def decode(frame: bytes) -> tuple[Message, np.ndarray | None]:
    """Split a frame into its header and (for Batch and Result) a zero-copy tensor view."""
    (size,) = _LEN.unpack_from(frame)
    header = pickle.loads(frame[_LEN.size : _LEN.size + size])
    if isinstance(header, Batch | Result) and not getattr(header, "shm", ""):
        data = memoryview(frame)[_LEN.size + size :]
        return header, np.frombuffer(data, dtype=header.dtype).reshape(header.shape)
    return header, None
