"""What nginx in front of modelhost costs, and what clients see when an instance goes away.

Overhead: the tiny model (so the server's and the proxy's own costs show most) on one
instance, measured directly, through nginx over plain HTTP and through nginx with TLS, in
alternating rounds, at concurrency 1 (latency) and 16 (throughput). nginx's upstream there is
that one instance, so the only difference is the proxy.

Failover: three instances behind nginx (deploy/nginx/modelhost.conf as shipped, addresses
replaced), closed-loop load at concurrency 8; one instance is stopped (SIGTERM, then kill -9 in
a second run) a third into the run and restarted two seconds later. Reported: requests that
failed at the client, requests nginx retried on another instance, and when the restarted
instance served again.

    python benchmarks/balancer.py                     # 2 rounds x 5 s per setting
    python benchmarks/balancer.py --rounds 1 --duration 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT / "src", ROOT / "benchmarks", ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import tiny_model  # noqa: E402
from run import _child_env, _stop, _wait_ready, free_port, photo_jpeg  # noqa: E402
from tests.deploy.topology import Nginx, nobody_folder, retried  # noqa: E402

from modelhost import loadgen  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "balancer.json"


def start(model: Path, port: int, folder: Path) -> subprocess.Popen:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "server.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "modelhost.cli", "serve", str(model), "--port", str(port),
             "--no-log-predictions", "--cache-dir", str(folder / "cache")],
            stdout=log, stderr=subprocess.STDOUT, env=_child_env(), cwd=ROOT)
    _wait_ready(f"http://127.0.0.1:{port}", process, 120, folder / "server.log")
    return process


def measure(url: str, jpeg: bytes, concurrency: int, seconds: float) -> loadgen.LevelResult:
    target = loadgen.upload_target(f"{url}/api/models/tiny/predict", "image", "a.jpg", jpeg)
    return loadgen.run_load_sync([loadgen.LoadSpec(target, concurrency)], seconds, 1.0)[0]


def overhead(model: Path, jpeg: bytes, folder: Path, rounds: int, seconds: float) -> dict:
    port = free_port()
    process = start(model, port, folder / "single")
    nginx = Nginx(nobody_folder("modelhost-bench-nginx-"), [port])
    nginx.start()
    os.environ["SSL_CERT_FILE"] = str(nginx.cert)  # the load generator trusts nginx's cert
    routes = {"direct": f"http://127.0.0.1:{port}", "nginx": nginx.url,
              "nginx+tls": nginx.tls_url}
    results: dict[str, dict[int, list[dict]]] = {r: {1: [], 16: []} for r in routes}
    try:
        for round_ in range(rounds):
            for concurrency in (1, 16):
                for route, url in routes.items():
                    r = measure(url, jpeg, concurrency, seconds)
                    results[route][concurrency].append(
                        {"rps": r.rps, "p50_ms": r.latency_ms["p50"],
                         "p99_ms": r.latency_ms["p99"], "errors": r.errors})
                    print(f"round {round_ + 1} c={concurrency:<2} {route:>9}: {r.rps:7.1f} req/s"
                          f"  p50 {r.latency_ms['p50']:.2f} ms  p99 {r.latency_ms['p99']:.2f} ms"
                          f"  errors {r.errors}", flush=True)
    finally:
        os.environ.pop("SSL_CERT_FILE")
        nginx.stop()
        _stop(process)
        shutil.rmtree(nginx.folder, ignore_errors=True)
    return {route: {c: {k: statistics.median(run[k] for run in runs)
                        for k in ("rps", "p50_ms", "p99_ms")} | {"runs": runs}
                    for c, runs in by_c.items()} for route, by_c in results.items()}


def failover(model: Path, jpeg: bytes, folder: Path, sig: signal.Signals, seconds: float) -> dict:
    ports = [free_port() for _ in range(3)]
    processes = [start(model, port, folder / f"i{n}") for n, port in enumerate(ports)]
    nginx = Nginx(nobody_folder("modelhost-bench-nginx-"), ports)
    nginx.start()
    events: dict[str, float] = {}

    def disturb() -> None:
        time.sleep(1.0 + seconds / 3)  # after the warm-up, a third into the run
        events["stopped"] = time.monotonic()
        processes[1].send_signal(sig)
        processes[1].wait(60)
        events["exited"] = time.monotonic()
        time.sleep(2.0)
        processes[1] = start(model, ports[1], folder / "i1")
        events["ready"] = time.monotonic()

    thread = threading.Thread(target=disturb)
    try:
        thread.start()
        result = measure(nginx.url, jpeg, 8, seconds + 8)
        thread.join()
        access = nginx.access_log()
    finally:
        nginx.stop()
        for process in processes:
            _stop(process)
        shutil.rmtree(nginx.folder, ignore_errors=True)
    restarted = f"upstream=127.0.0.1:{ports[1]} "
    return {
        "signal": sig.name, "requests": result.requests, "ok": result.ok,
        "failed": result.requests - result.ok, "statuses": result.statuses,
        "retried_by_nginx": retried(access),
        "served_by_restarted_instance": sum(restarted in line for line in access),
        "stop_to_exit_s": round(events["exited"] - events["stopped"], 2),
        "stop_to_restarted_ready_s": round(events["ready"] - events["stopped"], 2),
        "p50_ms": result.latency_ms["p50"], "p99_ms": result.latency_ms["p99"],
        "max_ms": result.latency_ms.get("max"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    jpeg = photo_jpeg()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = tiny_model.build(folder / "tiny")
        report = {"overhead": overhead(model, jpeg, folder, args.rounds, args.duration)}
        report["failover"] = [failover(model, jpeg, folder, sig, 12.0)
                              for sig in (signal.SIGTERM, signal.SIGKILL)]
    for run in report["failover"]:
        print(json.dumps({k: v for k, v in run.items() if k != "statuses"}))
    report["time"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
