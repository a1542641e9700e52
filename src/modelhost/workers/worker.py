"""The worker process: load one model, warm it up, then decode and run batches until told to
stop.

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
import resource
import signal
import sys
import time
from dataclasses import replace
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
    conn.send_bytes(encode(Ready(info, time.perf_counter() - started, os.getpid())))
    _serve(conn, runtime, prep, start)


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


def _serve(conn: Connection, runtime: Runtime, prep: Preprocessing, start: Start) -> None:
    slots = Attachments()
    while True:
        try:
            header, payload = decode(conn.recv_bytes())
        except (EOFError, OSError):
            return
        if isinstance(header, Stop):
            return
        if isinstance(header, Batch):
            if header.shm:
                payload = slots.view(header.shm, header.items[-1].end)
            try:
                frame = _run(runtime, prep, start, header, payload)
            except Exception as exc:  # a bug here must fail one batch, not the worker
                frame = encode(BatchFailed(header.batch_id, "model_failed", _describe(exc)))
            conn.send_bytes(frame)


def _run(runtime: Runtime, prep: Preprocessing, start: Start, batch: Batch, payload) -> bytes:
    """Decode each image on its own (a bad one fails alone), then run the good ones together."""
    max_pixels = start.max_pixels
    rows: list[np.ndarray] = []
    images: list[Image.Image] = []  # instead, for a pipeline.py that wants PIL images
    ok: list[int] = []
    errors: list[tuple[int, str, str]] = []
    decode_ms: list[float] = []
    digests: list[str] = []
    takes_images = runtime.takes_images
    for index, item in enumerate(batch.items):
        started = time.perf_counter()
        try:
            data = payload[item.start : item.end]
            # Hashed here, not in the server: 40 µs for a 60 KB JPEG was 3 % of the event
            # loop's time per request at the tiny model's rate (benchmarks/prediction_log.py).
            # Only with a prediction log: nothing else reads the digest.
            digests.append(hashlib.sha256(data).hexdigest() if start.hash_inputs else "")
            if takes_images:
                images.append(_image(data, item.region, prep, max_pixels))
            else:
                rows.append(_row(data, prep, item.region, max_pixels))
            ok.append(index)
        except ModelhostError as exc:
            errors.append((index, exc.code, exc.message))
        except Exception:  # MemoryError, a decoder bug: still this image's problem only
            errors.append((index, "image_decode_failed", "the image could not be decoded"))
        decode_ms.append((time.perf_counter() - started) * 1000)
    output, elapsed = np.zeros((0, 0), np.float32), 0.0
    if ok:
        started = time.perf_counter()
        try:
            output = np.asarray(runtime.predict_images(images) if takes_images
                                else runtime.predict(np.stack(rows)))
        except Exception as exc:
            return encode(BatchFailed(batch.batch_id, "model_failed", _describe(exc)))
        elapsed = (time.perf_counter() - started) * 1000
        output = output.reshape(output.shape[0], -1).astype(np.float32, copy=False)
    header = Result(batch.batch_id, "float32", output.shape, tuple(ok), tuple(errors),
                    tuple(decode_ms), elapsed, tuple(digests))
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
