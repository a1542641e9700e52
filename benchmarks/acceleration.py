"""Execution providers and INT8 for the imagenet demo, beside the CPU FP32 figure and the
in-process limit of the same run (``benchmarks/run.py --providers cpu,openvino --precision
fp32,int8``).

Each configuration is ``modelhost serve`` on a copy of the demo folder with ``--providers P
--precision Q``: throughput at concurrency 16 and latency at concurrency 1. INT8 is made first
by ``modelhost optimize --int8`` calibrated on scikit-image's and scikit-learn's photos, and is
measured only if it passed. OpenVINO runs under the interpreter named by ``--openvino-python``
(default: MODELHOST_TEST_OPENVINO_PYTHON, else this one): the onnxruntime-openvino build replaces
the onnxruntime package, so it usually lives in its own environment (.ci/run makes one).
Writes benchmarks/results/acceleration.json.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import run  # benchmarks/run.py: the server, the load generator and the in-process limit
from PIL import Image

from modelhost import loadgen

RESULTS = run.ROOT / "benchmarks" / "results" / "acceleration.json"
LEVELS = (1, 16)


def benchmark(providers: list[str], precisions: list[str], opts: run.Options,
              openvino_python: str, tmp: Path) -> dict[str, Any]:
    """Every provider × precision, the CPU FP32 first; ratios against it and the limit."""
    demo = run.convert_imagenet()
    jpeg = run.photo_jpeg()
    folder = _copy(demo, tmp / "imagenet")
    optimized = _optimize(folder, tmp) if "int8" in precisions else None
    report: dict[str, Any] = {"machine": run.machine(), "options": opts.__dict__,
                              "load_average_at_start": os.getloadavg(), "configurations": []}
    report["limit"] = run.in_process_limit(folder / "model.onnx", run.PREPS["imagenet"], jpeg,
                                           opts.limit_seconds)
    report["int8"] = optimized
    for precision in ["fp32", *(p for p in precisions if p != "fp32")]:
        if precision == "int8" and not (optimized and optimized["passed"]):
            continue
        for provider in ["cpu", *(p for p in providers if p != "cpu")]:
            python = openvino_python if provider == "openvino" else sys.executable
            report["configurations"].append(
                _configuration(folder, provider, precision, python, jpeg, opts, tmp))
    _ratios(report)
    return report


def _copy(demo: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    for name in ("model.onnx", "labels.txt", "modelhost.toml"):
        shutil.copy(demo / name, target / name)
    return target


def _optimize(folder: Path, tmp: Path) -> dict[str, Any]:
    """``modelhost optimize --int8`` calibrated on six real photos; its optimize.json."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    photos = tmp / "photos"
    photos.mkdir()
    arrays = [getattr(skimage.data, n)() for n in ("astronaut", "chelsea", "coffee", "rocket")]
    for index, array in enumerate([*arrays, *load_sample_images().images]):
        Image.fromarray(array[..., :3]).save(photos / f"photo-{index}.jpg", quality=92)
    print("[imagenet] modelhost optimize --int8 ...", flush=True)
    done = subprocess.run([sys.executable, "-m", "modelhost.cli", "optimize", str(folder),
                           "--int8", "--samples", str(photos)], env=run._child_env(),
                          capture_output=True, text=True, check=False)
    print(done.stdout, done.stderr, flush=True)
    record = folder / "optimize.json"
    return json.loads(record.read_text()) if record.exists() else {"passed": False}


def _configuration(folder: Path, provider: str, precision: str, python: str, jpeg: bytes,
                   opts: run.Options, tmp: Path) -> dict[str, Any]:
    name = f"{provider}/{precision}"
    print(f"[imagenet {name}] modelhost serve ...", flush=True)
    load = os.getloadavg()[0]
    extra = ["--providers", provider, "--precision", precision, "--no-log-predictions"]
    log = tmp / f"server-{provider}-{precision}.log"
    try:
        with run.running_server(folder, log, opts.ready_timeout, extra, python) as server:
            info = _model(server.base)
            target = loadgen.upload_target(f"{server.base}/api/models/imagenet/predict",
                                           "image", "a.jpg", jpeg)
            levels = {}
            for concurrency in LEVELS:
                spec = loadgen.LoadSpec(target, concurrency, name=f"c{concurrency}")
                result = loadgen.run_load_sync([spec], opts.duration, opts.warmup)[0]
                run._print_level(result)
                levels[f"c{concurrency}"] = result.to_dict()
    except RuntimeError as exc:
        reason = _refusal(str(exc))
        print(f"  failed: {reason}", flush=True)
        return {"name": name, "error": reason, "load_average_before": load}
    return {"name": name, "provider": provider, "precision": precision,
            "served_by": info, "levels": levels, "load_average_before": load}


def _refusal(text: str) -> str:
    """The server's one-line reason (a provider refused, say) from its log tail."""
    for line in text.splitlines():
        if '"level":"error"' in line:
            return json.loads(line)["msg"].split(" failed to load: ")[-1]
    return text.splitlines()[0]


def _model(base: str) -> list[dict]:
    import httpx

    return httpx.get(base + "/api/models/imagenet", timeout=10).json()["providers"]


def _ratios(report: dict[str, Any]) -> None:
    """Throughput at c=16 over the CPU FP32 figure and over the in-process limit (batch 1)."""
    rows = [c for c in report["configurations"] if "levels" in c]
    base = next((c for c in rows if c["name"] == "cpu/fp32"), None)
    limit = report["limit"]["batch1"]["rps"]
    for row in rows:
        rps = row["levels"]["c16"]["rps"]
        row["vs_cpu_fp32"] = rps / base["levels"]["c16"]["rps"] if base else None
        row["vs_limit"] = rps / limit


def print_table(report: dict[str, Any]) -> None:
    limit = report["limit"]["batch1"]
    print(f"\nin-process limit (CPU FP32, batch 1, 2 threads): {limit['rps']:.1f}/s, "
          f"p50 {limit['p50_ms']:.1f} ms")
    print(f"{'configuration':<16}{'c16 req/s':>10}{'× cpu/fp32':>12}{'× limit':>9}"
          f"{'c1 p50 ms':>11}{'load':>6}")
    for row in report["configurations"]:
        if "levels" not in row:
            print(f"{row['name']:<16} failed: {row['error'][:160]}")
            continue
        c16, c1 = row["levels"]["c16"], row["levels"]["c1"]
        print(f"{row['name']:<16}{c16['rps']:>10.1f}{row['vs_cpu_fp32']:>12.2f}"
              f"{row['vs_limit']:>9.2f}{c1['latency_ms']['p50']:>11.1f}"
              f"{row['load_average_before']:>6.1f}")


def main(providers: list[str], precisions: list[str], opts: run.Options,
         openvino_python: str | None) -> int:
    import tempfile

    python = openvino_python or os.environ.get("MODELHOST_TEST_OPENVINO_PYTHON") or sys.executable
    with tempfile.TemporaryDirectory(prefix="modelhost-accel-") as tmp:
        report = benchmark(providers, precisions, opts, python, Path(tmp))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"wrote {RESULTS.relative_to(run.ROOT)}")
    return 1 if any("error" in c for c in report["configurations"]) else 0
