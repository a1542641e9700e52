"""The worker process: load one model, warm it up, then decode and run batches until told to
stop (decoding the next batch in a second thread while the model runs the current one).

Started as ``python -m modelhost.workers.worker FD`` with one end of a socket pair: a fresh
interpreter that imports only what a worker needs (multiprocessing's ``spawn`` would also
re-import the server's ``__main__``). It talks only through that socket and exits when it
closes, so a dead server never leaves orphan workers behind.

Images are decoded here, not in the HTTP process: with decoding in a thread pool of the server,
the event loop and the decoders fought over the GIL and a tiny model reached 430 req/s in
process; decoding in the workers uses both cores without that contention (docs/benchmarks.md).
A decoder that crashes or exhausts memory takes down a worker, not the server.
"""

from __future__ import annotations

import hashlib
import os
import queue
import resource
import signal
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection

import numpy as np
from PIL import Image

from ..errors import InvalidInput, ModelhostError
from ..inputs.drift import measure, photo_like
from ..inputs.images import to_image, to_tensor
from ..logs import quiet_stderr
from ..preprocessing import resolve
from ..runtimes.base import (
    ModelFileError,
    Runtime,
    RuntimeUnavailable,
    UntrustedCode,
    first_line,
    load_runtime,
)
from ..runtimes.providers import ProviderError
from ..types import ModelInfo, Preprocessing, Region
from .messages import (
    Batch,
    BatchFailed,
    LoadFailed,
    RawTensor,
    Ready,
    Result,
    Start,
    Stop,
    decode,
    encode,
)
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
    if start.memory_limit:  # an allocation past it fails in this process, not the machine
        resource.setrlimit(resource.RLIMIT_AS, (start.memory_limit, start.memory_limit))
    started = time.perf_counter()
    try:
        with quiet_stderr(not start.verbose):
            runtime = load_runtime(start.spec, start.threads)
            prep = resolve(start.spec.config, runtime.info)
            _warm_up(runtime, prep, start.max_pixels)
            info = _with_drift(runtime, prep, start)
    except Exception as exc:  # report any load failure as data, then exit
        conn.send_bytes(encode(LoadFailed("model_load_failed", _describe(exc))))
        return
    ready = encode(Ready(info, time.perf_counter() - started, os.getpid()))
    _serve(conn, runtime, prep, start, ready)


def _warm_up(runtime: Runtime, prep: Preprocessing, max_pixels: int) -> None:
    """One image through the whole pipeline, so that the first request does not pay for lazy
    initialisation (nor find that the pipeline's library, e.g. TensorFlow, is missing)."""
    if runtime.takes_images:
        runtime.predict_images([Image.new("RGB", prep.size)])
    else:
        row = to_tensor(photo_like((64, 48), 0), prep, Region(), max_pixels)
        runtime.predict(row[None])


def _with_drift(runtime: Runtime, prep: Preprocessing, start: Start) -> ModelInfo:
    """The runtime's info, with the measured drift of ``decode = "fast"`` when it is on."""
    if prep.decode != "fast" or runtime.takes_images:
        return runtime.info
    drift = measure(runtime.predict, prep, start.spec.config.output_kind,
                    start.spec.path.parent, start.max_pixels)
    return replace(runtime.info, drift=drift)


@dataclass
class _Decoded:
    """One batch after the decode stage: the model's inputs and each image's outcome."""

    batch: Batch
    rows: list[np.ndarray] = field(default_factory=list)
    images: list[Image.Image] = field(default_factory=list)  # for a pipeline.py's images
    ok: list[int] = field(default_factory=list)
    errors: list[tuple[int, str, str]] = field(default_factory=list)
    decode_ms: list[float] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)


def _serve(conn: Connection, runtime: Runtime, prep: Preprocessing, start: Start,
           ready: bytes) -> None:
    """Two stages in two threads: a reader receives and decodes the next batch while this
    thread runs the model on the current one. Pillow's decoder and resampling and ONNX
    Runtime release the GIL, so a worker overlaps a JPEG's decoding with the previous
    batch's inference instead of idling its runtime threads (the server keeps up to two
    batches in flight per worker, pool.MAX_INFLIGHT). One batch alone pays only the hand-over
    between the threads; the order of results is the order of batches. ``ready`` is sent once
    the reader runs: every thread exists by then, so the server's priority change for a
    shadow version reaches them all (pool._renice)."""
    # A SimpleQueue: its put is one C call with no Python-level condition variable (a
    # queue.Queue's notify/wait took half of a tiny model's worker samples in py-spy). It
    # needs no bound: the server sends at most pool.MAX_INFLIGHT batches ahead.
    decoded: queue.SimpleQueue[_Decoded | bytes | None] = queue.SimpleQueue()
    reader = threading.Thread(target=_read_and_decode, name="decode", daemon=True,
                              args=(conn, prep, start, runtime.takes_images, decoded))
    reader.start()
    conn.send_bytes(ready)
    while (job := decoded.get()) is not None:
        conn.send_bytes(job if isinstance(job, bytes) else _infer(runtime, job))


def _read_and_decode(conn: Connection, prep: Preprocessing, start: Start, takes_images: bool,
                     out: queue.SimpleQueue[_Decoded | bytes | None]) -> None:
    """The reader stage: each batch decoded (or failed, as a ready frame); None at the end."""
    slots = Attachments()
    while True:
        try:
            header, payload = decode(conn.recv_bytes())
        except (EOFError, OSError):
            break
        if isinstance(header, Stop):
            break
        if isinstance(header, Batch):
            if header.shm:
                payload = slots.view(header.shm, header.items[-1].end)
            try:
                out.put(_decode_batch(prep, start, takes_images, header, payload))
            except Exception as exc:  # a bug here must fail one batch, not the worker
                out.put(encode(BatchFailed(header.batch_id, "model_failed", _describe(exc))))
    out.put(None)


def _decode_batch(prep: Preprocessing, start: Start, takes_images: bool, batch: Batch,
                  payload) -> _Decoded:
    """Decode each image on its own: a bad one fails alone."""
    job = _Decoded(batch)
    for index, item in enumerate(batch.items):
        started = time.perf_counter()
        try:
            data = payload[item.start : item.end]
            # Hashed here, not in the server: 40 µs for a 60 KB JPEG was 3 % of the event
            # loop's time per request at the tiny model's rate (benchmarks/prediction_log.py).
            # Only with a prediction log: nothing else reads the digest.
            job.digests.append(hashlib.sha256(data).hexdigest() if start.hash_inputs else "")
            if takes_images:
                job.images.append(_image(data, item.region, prep, start.max_pixels))
            else:
                job.rows.append(_row(data, prep, item.region, start.max_pixels))
            job.ok.append(index)
        except ModelhostError as exc:
            job.errors.append((index, exc.code, exc.message))
        except Exception:  # MemoryError, a decoder bug: still this image's problem only
            job.errors.append((index, "image_decode_failed", "the image could not be decoded"))
        job.decode_ms.append((time.perf_counter() - started) * 1000)
    return job


def _infer(runtime: Runtime, job: _Decoded) -> bytes:
    """Run the good images of a decoded batch together; the result frame."""
    output, elapsed = np.zeros((0, 0), np.float32), 0.0
    if job.ok:
        started = time.perf_counter()
        try:
            output = np.asarray(runtime.predict_images(job.images) if runtime.takes_images
                                else runtime.predict(np.stack(job.rows)))
        except Exception as exc:
            return encode(BatchFailed(job.batch.batch_id, "model_failed", _describe(exc)))
        elapsed = (time.perf_counter() - started) * 1000
        output = output.reshape(output.shape[0], -1).astype(np.float32, copy=False)
    header = Result(job.batch.batch_id, "float32", output.shape, tuple(job.ok),
                    tuple(job.errors), tuple(job.decode_ms), elapsed, tuple(job.digests))
    return encode(header, output)


def _row(data, prep: Preprocessing, region: Region | RawTensor, max_pixels: int) -> np.ndarray:
    """One input row: a ready tensor as sent (cast to the model's dtype), or a decoded image."""
    if isinstance(region, RawTensor):
        row = np.frombuffer(data, dtype=region.dtype).reshape(region.shape)
        return row.astype(prep.dtype, copy=False)
    return to_tensor(data, prep, region, max_pixels)


def _image(data, region: Region | RawTensor, prep: Preprocessing,
           max_pixels: int) -> Image.Image:
    """One decoded image for a pipeline.py that takes images (it has no tensor shape)."""
    if isinstance(region, RawTensor):
        raise InvalidInput("this model takes images, not tensors")
    return to_image(data, region, prep.default_crop, max_pixels)


def _describe(exc: BaseException) -> str:
    """A one-line reason without a traceback; the type name says a lot already (modelhost's
    own refusals are complete sentences without it)."""
    text = first_line(exc, 500)
    if isinstance(exc, ModelFileError | UntrustedCode | RuntimeUnavailable | ProviderError) \
            and text:
        return text[:500]
    return f"{type(exc).__name__}: {text}"[:500] if text else type(exc).__name__


if __name__ == "__main__":
    main(int(sys.argv[1]))
