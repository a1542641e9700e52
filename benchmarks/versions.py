"""What serving versions side by side costs (issue 13): the tiny model (the server's own overhead
dominates, so any routing cost shows most) served as one version, as two versions under a
50/50 split, and as a default version with a shadow, at concurrency 1 on native uploads.

Reported per setting: requests/s and p50/p90 latency (medians over rounds; rounds alternate the
settings so that drift of this shared machine hits them alike), the ratio of p50 against the
single version, and the resident memory (RSS) of the worker processes: the difference between
two versions and one is what an extra version costs.

    python benchmarks/versions.py                   # 2 rounds x 5 s per setting (about 55 s)
    python benchmarks/versions.py --rounds 1 --duration 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT / "src", ROOT / "benchmarks", ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import onnx  # noqa: E402
import tiny_model  # noqa: E402
from run import photo_jpeg, running_server  # noqa: E402
from tests.support import children_of  # noqa: E402

from modelhost import loadgen  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SETTINGS = {
    "one version": '[versions]\nserve = "latest"\n',
    "split 50/50": '[versions]\nserve = "all"\nsplit = {"1" = 50, "2" = 50}\n',
    "shadow": '[versions]\nserve = "all"\ndefault = "1"\nshadow = "2"\n',
}


def repository(folder: Path, policy: str) -> Path:
    """Model ``tiny`` with versions 1 and 2 (different weights) and ``policy``."""
    model = folder / "tiny"
    for version, seed in (("1", 0), ("2", 1)):
        (model / version).mkdir(parents=True, exist_ok=True)
        onnx.save(tiny_model.build_graph(seed), str(model / version / "model.onnx"))
    (model / "labels.txt").write_text("\n".join(tiny_model.LABELS) + "\n")
    (model / "modelhost.toml").write_text(tiny_model.MODELHOST_TOML + "\n" + policy)
    return folder


def workers_rss_mb(server_pid: int) -> float:
    """Resident memory of the server's worker processes, in MiB."""
    total = 0
    for pid in children_of(server_pid):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


def one_run(folder: Path, jpeg: bytes, seconds: float, log: Path) -> dict:
    with running_server(folder, log, 120, ["--no-log-predictions"]) as run:
        rss = workers_rss_mb(_server_pid(folder))
        target = loadgen.upload_target(f"{run.base}/api/models/tiny/predict", "image", "a.jpg",
                                       jpeg)
        result = loadgen.run_load_sync([loadgen.LoadSpec(target, 1)], seconds, 1.0)[0]
    return {**result.to_dict(), "workers_rss_mb": round(rss, 1)}


def _server_pid(folder: Path) -> int:
    """The ``modelhost serve FOLDER`` process that ``running_server`` started."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"modelhost.cli" in args and str(folder).encode() in args:
            return int(entry)
    raise RuntimeError(f"no modelhost serve {folder} running")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args()
    jpeg = photo_jpeg()
    runs: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for name, policy in SETTINGS.items():
                folder = repository(Path(tmp) / f"{round_}-{len(runs[name])}-{name[:5]}",
                                    policy)
                result = one_run(folder, jpeg, args.duration, Path(tmp) / "server.log")
                runs[name].append(result)
                print(f"round {round_ + 1} {name:>12}: {result['rps']:6.1f} req/s  "
                      f"p50 {result['latency_ms']['p50']:.2f} ms  "
                      f"workers {result['workers_rss_mb']:.0f} MiB  "
                      f"errors {result['errors']}", flush=True)
    summary = {name: {
        "rps": statistics.median(r["rps"] for r in rs),
        "p50_ms": statistics.median(r["latency_ms"]["p50"] for r in rs),
        "p90_ms": statistics.median(r["latency_ms"]["p90"] for r in rs),
        "workers_rss_mb": statistics.median(r["workers_rss_mb"] for r in rs),
        "errors": sum(sum(r["errors"].values()) for r in rs),
    } for name, rs in runs.items()}
    base = summary["one version"]
    for figures in summary.values():
        figures["p50_vs_one_version"] = round(figures["p50_ms"] / base["p50_ms"], 3)
    report = {"concurrency": 1, "duration_s": args.duration, "rounds": args.rounds,
              "load_average_at_start": round(load, 2),
              "load_average_at_end": round(os.getloadavg()[0], 2),
              "extra_version_rss_mb": round(summary["split 50/50"]["workers_rss_mb"]
                                            - base["workers_rss_mb"], 1),
              "summary": summary, "runs": runs,
              "time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    (RESULTS / "versions.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("extra_version_rss_mb", "load_average_at_start",
                                              "load_average_at_end")}))
    for name, figures in summary.items():
        print(f"{name:>12}: p50 {figures['p50_ms']:.2f} ms ({figures['p50_vs_one_version']}x), "
              f"{figures['rps']:.1f} req/s, workers {figures['workers_rss_mb']:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
