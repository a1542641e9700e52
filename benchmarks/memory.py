"""Memory per model worker against the runtime alone (issue 16's "RSS per worker ≤ 1.3× the
runtime alone").

For each model folder (the tiny model, the imagenet demo and the MobileNetV2-class model, as in
``run.py``, served with the layout modelhost tunes for them unless ``--layout pinned``):

1. **modelhost**: ``modelhost serve FOLDER``, loaded at concurrency 16 for a few seconds with
   the benchmark photo; then each worker process's resident set (``VmRSS``) and peak
   (``VmHWM``) from ``/proc``, and the HTTP process's;
2. **the runtime alone**: a bare Python process that imports ONNX Runtime and NumPy, opens an
   ``InferenceSession`` on the model with the worker's thread count and runs it on one input —
   the least any server needs to hold that model — and then on every batch size up to the
   worker's largest batch: ONNX Runtime keeps the activations of its largest batch in its
   arena (a MobileNetV2 batch of 8 holds ~90 MB more than a batch of 1, in any server that
   batches), so modelhost's own cost is the worker over the runtime doing the same work. Both
   ratios are reported.

RSS does not depend on the machine's load, so unlike the throughput runs this one can be taken
on a busy machine. Writes ``benchmarks/results/memory.json``.

    python benchmarks/memory.py
    python benchmarks/memory.py --models imagenet --seconds 10
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import run  # benchmarks/run.py: model folders, the photo and the server

from modelhost import loadgen

RESULTS = run.ROOT / "benchmarks" / "results" / "memory.json"

_BARE = """
import json, sys
import numpy as np
import onnxruntime as ort

def rss():
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {k: int(status[k].split()[0]) for k in ("VmRSS", "VmHWM")}

options = ort.SessionOptions()
options.intra_op_num_threads = int(sys.argv[2])
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
first = session.get_inputs()[0]
shape = [1 if not isinstance(d, int) else d for d in first.shape]
kind = np.uint8 if "uint8" in first.type else np.float32
session.run(None, {first.name: np.zeros(shape, kind)})
one = rss()
for size in range(2, int(sys.argv[3]) + 1):
    session.run(None, {first.name: np.zeros([size] + shape[1:], kind)})
print(json.dumps({"batch_1": one, "largest_batch": rss()}))
"""


def bare_runtime(model: Path, threads: int, largest_batch: int) -> dict[str, dict[str, int]]:
    """kB resident in a process that holds only ONNX Runtime with ``model`` loaded, after one
    input and after every batch size up to ``largest_batch``."""
    out = subprocess.run([sys.executable, "-c", _BARE, str(model), str(threads),
                          str(largest_batch)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def status_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a live process, in kB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text()
                  .splitlines() if ":" in line)
    return {key: int(fields[key].split()[0]) for key in ("VmRSS", "VmHWM")}


def worker_pids(server_pid: int) -> list[int]:
    """The model workers: direct children of the server running ``modelhost.workers``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat[stat.rindex(")") + 2:].split()[1])
        if parent == server_pid and b"modelhost.workers" in cmdline:
            found.append(int(entry.name))
    return sorted(found)


def measure(name: str, folder: Path, jpeg: bytes, seconds: float, logs: Path) -> dict[str, Any]:
    """The runtime alone, then the server's processes after a load at concurrency 16."""
    with run.running_server(folder, logs / f"memory-{name}.log", 300) as server:
        model = httpx.get(server.base + "/api/models", timeout=10).json()["models"][0]
        target = loadgen.upload_target(f"{server.base}/api/models/{model['name']}/predict",
                                       "image", "a.jpg", jpeg)
        load = loadgen.run_load_sync([loadgen.LoadSpec(target, 16, name="c16")], seconds, 1.0)
        server_pid = server.pid
        workers = {pid: status_kb(pid) for pid in worker_pids(server_pid)}
        http = status_kb(server_pid)
    layout = model["layout"]
    threads, largest = int(layout["threads"]), int(layout["max_batch_size"])
    bare = bare_runtime(folder / "model.onnx", threads, largest)
    return {
        "model": model["name"], "layout": layout,
        "requests": load[0].to_dict()["requests"],
        "runtime_alone_kb": bare, "workers_kb": list(workers.values()), "http_process_kb": http,
        "worker_rss_over_runtime_batch_1": [w["VmRSS"] / bare["batch_1"]["VmRSS"]
                                            for w in workers.values()],
        "worker_rss_over_runtime_same_batches": [w["VmRSS"] / bare["largest_batch"]["VmRSS"]
                                                 for w in workers.values()],
        "total_rss_mb": (http["VmRSS"] + sum(w["VmRSS"] for w in workers.values())) / 1024,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,imagenet,mobilenet")
    parser.add_argument("--layout", choices=("tuned", "pinned"), default="tuned",
                        help="tuned: no [workers]/[batching] in the folders (the default)")
    parser.add_argument("--seconds", type=float, default=5.0, help="load before measuring")
    args = parser.parse_args(argv)
    names = tuple(n.strip() for n in args.models.split(",") if n.strip())
    jpeg = run.photo_jpeg()
    report: dict[str, Any] = {"machine": run.machine(), "models": {}}
    with tempfile.TemporaryDirectory(prefix="modelhost-memory-") as tmp:
        folders = run.prepare_models(names, Path(tmp), args.layout)
        for name in names:
            result = measure(name, folders[name], jpeg, args.seconds, Path(tmp))
            report["models"][name] = result
            bare = result["runtime_alone_kb"]
            one, same = (", ".join(f"{r:.2f}×" for r in result[key]) for key in
                         ("worker_rss_over_runtime_batch_1",
                          "worker_rss_over_runtime_same_batches"))
            print(f"[{name}] {result['layout']}: runtime alone "
                  f"{bare['batch_1']['VmRSS'] / 1024:.0f} MB at batch 1, "
                  f"{bare['largest_batch']['VmRSS'] / 1024:.0f} MB after its batches; per "
                  f"worker {one} of the first, {same} of the second; "
                  f"HTTP process {result['http_process_kb']['VmRSS'] / 1024:.0f} MB; "
                  f"total {result['total_rss_mb']:.0f} MB", flush=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS.relative_to(run.ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
