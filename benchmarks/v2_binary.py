"""KServe V2 with binary tensors against the native upload API, same model and concurrency.

Three requests, each sent back to back by :mod:`modelhost.loadgen` (the same closed-loop
client as ``benchmarks/run.py``):

* native: ``POST /api/models/{m}/predict`` with the JPEG as a multipart upload;
* v2-jpeg: ``POST /v2/models/{m}/infer``, the JPEG as a binary BYTES tensor
  (``Inference-Header-Content-Length``), classification top-5 returned;
* v2-uint8: the same, with a ready UINT8 tensor of the model's input shape (no decode).

Rounds alternate the three (in reversed order every other round) so that the other work on a
shared machine and any drift spread over all of them. Writes benchmarks/results/v2_binary.json.

    python benchmarks/v2_binary.py                      # tiny and imagenet, c=16
    python benchmarks/v2_binary.py --models tiny --seconds 5 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import struct
import sys
import tempfile
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run

from modelhost import loadgen

RESULTS = Path(__file__).resolve().parent / "results" / "v2_binary.json"


def v2_target(base: str, model: str, input_name: str, datatype: str, shape: list[int],
              blob: bytes) -> loadgen.Target:
    header = json.dumps({
        "inputs": [{"name": input_name, "datatype": datatype, "shape": shape,
                    "parameters": {"binary_data_size": len(blob)}}],
        "outputs": [{"name": "logits", "parameters": {"classification": 5}}],
    }).encode()
    return loadgen.Target(
        f"{base}/v2/models/{model}/infer", "POST", header + blob,
        (("Content-Type", "application/octet-stream"),
         ("Inference-Header-Content-Length", str(len(header)))))


def targets(base: str, jpeg: bytes) -> dict[str, loadgen.Target]:
    model = run.model_name(base)
    meta = httpx.get(f"{base}/v2/models/{model}", timeout=10).json()
    tensor = meta["inputs"][0]
    row = [1, *tensor["shape"][1:]]
    pixels = np.random.default_rng(0).integers(0, 256, size=row, dtype=np.uint8)
    return {
        "native": loadgen.upload_target(f"{base}/api/models/{model}/predict", "image",
                                        "a.jpg", jpeg),
        "v2-jpeg": v2_target(base, model, tensor["name"], "BYTES", [1],
                             struct.pack("<I", len(jpeg)) + jpeg),
        "v2-uint8": v2_target(base, model, tensor["name"], "UINT8", row, pixels.tobytes()),
    }


def measure(folder: Path, jpeg: bytes, concurrency: int, seconds: float, rounds: int,
            log: Path) -> dict[str, list[float]]:
    rps: dict[str, list[float]] = {}
    with run.running_server(folder, log, 300) as server:
        chosen = targets(server.base, jpeg)
        for target in chosen.values():  # each must answer 200 before it is timed
            response = httpx.request(target.method, target.url, content=target.body,
                                     headers=dict(target.headers), timeout=30)
            assert response.status_code == 200, response.text
        for round_ in range(rounds):
            order = list(chosen.items())
            for name, target in order[::-1] if round_ % 2 else order:
                spec = loadgen.LoadSpec(target, concurrency, name=name)
                result = loadgen.run_load_sync([spec], seconds, warmup=1.0)[0]
                assert not result.errors, result.errors
                rps.setdefault(name, []).append(result.rps)
                print(f"  {name:9s} c={concurrency}: {result.rps:7.1f} req/s, "
                      f"p50 {result.latency_ms['p50']:.1f} ms", flush=True)
    return rps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,imagenet")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    jpeg = run.photo_jpeg()
    report: dict = {"concurrency": args.concurrency, "seconds": args.seconds,
                    "rounds": args.rounds, "machine": run.machine(), "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folders = run.prepare_models(tuple(args.models.split(",")), Path(tmp))
        for name, folder in folders.items():
            print(f"{name}:", flush=True)
            rps = measure(folder, jpeg, args.concurrency, args.seconds, args.rounds,
                          Path(tmp) / f"{name}.log")
            native = statistics.median(rps["native"])
            report["models"][name] = {
                "rps": rps,
                "median_rps": {k: statistics.median(v) for k, v in rps.items()},
                "ratio_to_native": {k: statistics.median(v) / native for k, v in rps.items()},
            }
            print("  ratio to native: " + ", ".join(
                f"{k} {v:.2f}" for k, v in report["models"][name]["ratio_to_native"].items()))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
