"""The worker process: load one model, warm it up, then run batches until told to stop.

Started as ``python -m modelhost.workers.worker FD`` with one end of a socket pair: a fresh
interpreter that imports only what a worker needs (multiprocessing's ``spawn`` would also
re-import the server's ``__main__``). It talks only through that socket and exits when it
closes, so a dead server never leaves orphan workers behind.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from multiprocessing.connection import Connection

import numpy as np

from ..preprocessing import resolve, tensor_shape
from ..runtimes.base import load_runtime
from ..types import ModelSpec
from .messages import Batch, BatchFailed, LoadFailed, Ready, Result, Start, Stop, decode, encode
from .shm import Attachments


def main(fd: int) -> None:
    """Entry point of a worker process: read the Start frame, load, serve."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when workers stop
    conn = Connection(fd)
    try:
        start, _ = decode(conn.recv_bytes())
    except (EOFError, OSError):
        return
    assert isinstance(start, Start)
    _load_and_serve(conn, start.spec, start.threads)


def _load_and_serve(conn: Connection, spec: ModelSpec, threads: int) -> None:
    started = time.perf_counter()
    try:
        runtime = load_runtime(spec, threads)
        prep = resolve(spec.config, runtime.info)
        runtime.predict(np.zeros(tensor_shape(prep, 1), dtype=prep.dtype))  # warm-up
    except Exception as exc:  # report any load failure as data, then exit
        conn.send_bytes(encode(LoadFailed("model_load_failed", _describe(exc))))
        return
    conn.send_bytes(encode(Ready(runtime.info, time.perf_counter() - started, os.getpid())))
    _serve(conn, runtime)


def _serve(conn: Connection, runtime) -> None:
    slots = Attachments()
    while True:
        try:
            header, tensor = decode(conn.recv_bytes())
        except (EOFError, OSError):
            return
        if isinstance(header, Stop):
            return
        if isinstance(header, Batch):
            if header.shm:
                tensor = slots.view(header.shm, header.dtype, header.shape)
            conn.send_bytes(_run(runtime, header, tensor))


def _run(runtime, batch: Batch, tensor: np.ndarray) -> bytes:
    started = time.perf_counter()
    try:
        output = np.asarray(runtime.predict(tensor))
    except Exception as exc:
        return encode(BatchFailed(batch.batch_id, "model_failed", _describe(exc)))
    elapsed = (time.perf_counter() - started) * 1000
    if output.dtype != np.float32:
        output = output.astype(np.float32)
    output = output.reshape(output.shape[0], -1)
    return encode(Result(batch.batch_id, "float32", output.shape, elapsed), output)


def _describe(exc: BaseException) -> str:
    """A one-line reason without a traceback; the type name says a lot already."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:500] if text else type(exc).__name__


if __name__ == "__main__":
    main(int(sys.argv[1]))
