"""Keras `.h5` served three ways, for docs/benchmarks.md ('Keras models').

1. In process, the same MobileNetV2 `.h5` (224×224, random weights: speed does not depend on
   them): Keras `model.predict`, the `tf.function` call modelhost's native Keras runtime uses,
   and the ONNX model modelhost converts it to (verified) under ONNX Runtime — batch 1 and 32.
2. Over HTTP with the same JPEG: the tutorial-style Flask server (benchmarks/flask_reference.py)
   and `modelhost serve model.h5` (converted to ONNX), each at concurrency 1 and 8.

    python benchmarks/keras_serving.py [--duration 10]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def build(folder: Path) -> Path:
    import keras

    model = keras.applications.MobileNetV2(weights=None)
    path = folder / "mobilenet_v2.h5"
    model.save(path)
    (folder / "modelhost.toml").write_text('[input]\nscaling = "tf"\n')
    return path


def timed(call, batch: np.ndarray, repeats: int) -> float:
    """Median milliseconds per call after two warm-up calls."""
    call(batch)
    call(batch)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call(batch)
        times.append((time.perf_counter() - started) * 1000)
    return float(np.median(times))


def in_process(h5: Path, cache: Path) -> dict:
    from modelhost.repository import load_repository
    from modelhost.runtimes.base import load_runtime
    from modelhost.supply.convert import prepare

    spec = load_repository(h5)[0]
    keras_rt = load_runtime(spec, threads=2)
    converted = prepare(spec, cache, timeout=900)
    onnx_rt = load_runtime(converted, threads=2)
    model = keras_rt.model
    results = {"conversion": converted.runtime_note}
    rng = np.random.default_rng(0)
    for batch in (1, 32):
        x = rng.uniform(-1, 1, (batch, 224, 224, 3)).astype("float32")
        repeats = 20 if batch == 1 else 5
        results[f"batch{batch}"] = {
            "keras_predict_ms": timed(lambda b: model.predict(b, verbose=0), x, repeats),
            "tf_function_ms": timed(keras_rt.predict, x, repeats),
            "onnx_ms": timed(onnx_rt.predict, x, repeats),
        }
    return results


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, timeout: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not come up")


def http(h5: Path, cache: Path, jpeg: bytes, duration: float) -> dict:
    from modelhost.loadgen import LoadSpec, run_load_sync, upload_target

    results = {}
    servers = {
        "flask + model.predict": (
            [sys.executable, str(HERE / "flask_reference.py"), str(h5)], "/predict", "/predict"),
        "modelhost (ONNX)": (
            [sys.executable, "-m", "modelhost.cli", "serve", str(h5), "--cache-dir", str(cache),
             "--threads", "1", "--replicas", "2", "--port"],
            "/api/models/mobilenet_v2/predict", "/readyz"),
    }
    for name, (command, path, probe) in servers.items():
        port = free_port()
        process = subprocess.Popen([*command, str(port)], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_for(base + probe if probe != "/predict" else base + "/")
            for concurrency in (1, 8):
                target = upload_target(base + path, "image", "photo.jpg", jpeg)
                (level,) = run_load_sync([LoadSpec(target, concurrency)], duration, warmup=2)
                results[f"{name} c={concurrency}"] = {
                    "rps": round(level.rps, 1), "p50_ms": round(level.latency_ms["p50"], 1),
                    "p99_ms": round(level.latency_ms["p99"], 1), "ok": level.ok,
                    "requests": level.requests}
        finally:
            process.terminate()
            process.wait(30)
    return results


def photo() -> bytes:
    import io

    from PIL import Image
    from skimage import data

    image = Image.fromarray(data.coffee()).resize((500, 400), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        h5 = build(folder)
        report = {"load_average": os.getloadavg()[0],
                  "in_process": in_process(h5, folder / "cache"),
                  "http": http(h5, folder / "cache", photo(), args.duration)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
