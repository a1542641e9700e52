"""Benchmark scenarios: modelhost against the in-process limit, measured in the same run.

For each model (the tiny ONNX model from ``tiny_model.py``, the EfficientNet-Lite0 demo and a
MobileNetV2-architecture model from ``mobilenet_model.py``), served as a user's own model is —
no ``[workers]`` or ``[batching]`` in its folder, so modelhost tunes the layout at the first
start (``--layout pinned`` keeps the folders' own tables):

1. the in-process limit: a plain Python loop that decodes the whole JPEG with Pillow, resizes as
   the model's training pipeline does (the imagenet demo: torchvision's ``Resize(256)`` +
   ``CenterCrop(224)``), normalises and runs ONNX Runtime directly, at batch 1 with 2 intra-op
   threads and the best of batch 8 and 32. With ``--decode fast`` (or ``both``) the model's
   ``decode = "fast"`` is measured too, against a limit that takes the same ``Image.draft``
   DCT shortcut, so each mode has its own ratio;
2. modelhost: ``modelhost serve FOLDER --ops-port PORT`` in a subprocess on 127.0.0.1, loaded
   by :mod:`modelhost.loadgen` at concurrency 1, 16 and 64, with /healthz and /readyz probed
   on the main port and on the ops port beside the c=64 load by a prober process of its own
   (probe.py: a new connection per probe, as a kubelet sends them);
3. the tutorial Flask server (``flask_onnx.py``: threaded, one global ONNX Runtime session,
   the same preprocessing) at the same levels (``--no-flask`` skips it).

Also measured: what the load generator costs on its own (against a trivial asyncio server),
httpx as a comparison, and optionally ``wrk`` (``--wrk``) as a cross-check of the numbers.

Writes benchmarks/results/latest.json and docs/benchmarks.png. Run it on an idle machine:
the client shares the 2 cores with the server. ``--quick`` is a smoke check, not a benchmark.

    python benchmarks/run.py                 # full run, ~9 minutes
    python benchmarks/run.py --quick         # ~1 minute
    python benchmarks/run.py --models tiny --wrk
    python benchmarks/run.py --quick --decode both   # exact and fast side by side
    python benchmarks/run.py --providers cpu,openvino --precision fp32,int8   # acceleration.py
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
for _path in (SRC, ROOT / "benchmarks"):  # a checkout without `pip install -e .`; tiny_model
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import mobilenet_model  # noqa: E402  (benchmarks/ is this script's folder)
import tiny_model  # noqa: E402

from modelhost import loadgen  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "latest.json"
PLOT = ROOT / "docs" / "benchmarks.png"
LEVELS = (1, 16, 64)
PROBE_INTERVAL = 0.05  # each probe every 50 ms: 4 probes, 80 req/s, too few to load the server

Prep = Callable[[bytes], np.ndarray]


@dataclass(frozen=True)
class Options:
    duration: float
    warmup: float
    limit_seconds: float
    check_seconds: float
    ready_timeout: float
    models: tuple[str, ...]
    wrk: bool
    decodes: tuple[str, ...] = ("exact",)
    layout: str = "tuned"
    flask: bool = True


# ----------------------------------------------------------------------------- inputs


def photo_jpeg() -> bytes:
    """The request image: scikit-image's coffee photo at 500x400, JPEG quality 90 (~60 kB)."""
    from skimage import data

    image = Image.fromarray(data.coffee()).resize((500, 400), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def prepare_models(names: tuple[str, ...], cache: Path, layout: str) -> dict[str, Path]:
    """Model folders by scenario name; the ImageNet one is converted once and cached. With
    ``layout == "tuned"`` no folder pins ``[workers]`` or ``[batching]``: each model is served
    as a user's own model is, with the layout modelhost tunes at its first start."""
    folders: dict[str, Path] = {}
    if "tiny" in names:
        folders["tiny"] = tiny_model.build(cache / "tiny")
    if "imagenet" in names:  # a copy with this checkout's modelhost.toml (a cached
        from modelhost.demo.imagenet import TOML  # conversion may predate it)

        folders["imagenet"] = Path(shutil.copytree(convert_imagenet(), cache / "imagenet"))
        (folders["imagenet"] / "modelhost.toml").write_text(TOML, encoding="utf-8")
    if "mobilenet" in names:
        folders["mobilenet"] = mobilenet_model.build(cache / "mobilenet")
    if layout == "tuned":
        for folder in folders.values():
            unpin(folder / "modelhost.toml")
    return folders


def unpin(toml: Path) -> None:
    """Drop the ``[workers]`` and ``[batching]`` tables from a modelhost.toml."""
    kept, skipping = [], False
    for line in toml.read_text(encoding="utf-8").splitlines():
        if line.startswith("["):
            skipping = line.strip() in ("[workers]", "[batching]")
        if not skipping:
            kept.append(line)
    toml.write_text("\n".join(kept) + "\n", encoding="utf-8")


def convert_imagenet() -> Path:
    """The demo's EfficientNet-Lite0 folder, where ``modelhost serve`` would cache it too.

    The conversion runs in a subprocess so that torch never loads into this process, whose
    ONNX Runtime and event loop are what is measured.
    """
    from modelhost.settings import default_cache_dir

    out = default_cache_dir() / "demo" / "imagenet"
    if not (out / "model.onnx").exists():
        print(f"converting EfficientNet-Lite0 into {out} (once) ...", flush=True)
        code = "import sys; from modelhost.demo.imagenet import convert; convert(sys.argv[1])"
        subprocess.run([sys.executable, "-c", code, str(out)], check=True, env=_child_env())
    return out


def _draft(image: Image.Image, need: tuple[int, int], fast: bool) -> None:
    """With ``fast``, decode a JPEG at the smallest DCT scale still at least ``need`` (what the
    server's ``decode = "fast"`` does); otherwise decode it whole, as the default does."""
    if fast and image.format == "JPEG":
        image.draft("RGB", need)


def prep_tiny(jpeg: bytes, fast: bool = False) -> np.ndarray:
    """Stretch to 9x9 bilinear, scale to [0, 1], CHW."""
    image = Image.open(io.BytesIO(jpeg))
    _draft(image, (tiny_model.SIZE, tiny_model.SIZE), fast)
    image = image.convert("RGB").resize((tiny_model.SIZE,) * 2, Image.Resampling.BILINEAR)
    return (np.asarray(image, np.float32) / 255.0).transpose(2, 0, 1)


def prep_imagenet(jpeg: bytes, fast: bool = False) -> np.ndarray:
    """torchvision's Resize(256, bicubic) (longer side truncated) + CenterCrop(224) (offsets
    rounded), (x - 127) / 128, CHW."""
    image = Image.open(io.BytesIO(jpeg))
    width, height = image.size
    scale = 256 / min(width, height)
    _draft(image, (round(width * scale), round(height * scale)), fast)
    image = image.convert("RGB")
    short, long = sorted(image.size)
    size = (256, int(256 * long / short)) if image.width <= image.height else (
        int(256 * long / short), 256)
    left, top = round((size[0] - 224) / 2), round((size[1] - 224) / 2)
    image = image.resize(size, Image.Resampling.BICUBIC).crop((left, top, left + 224, top + 224))
    return ((np.asarray(image, np.float32) - 127.0) / 128.0).transpose(2, 0, 1)


def fast_folder(folder: Path, tmp: Path) -> Path:
    """A copy of the model folder whose modelhost.toml adds ``decode = "fast"``."""
    out = tmp / f"{folder.name}-fast"
    shutil.copytree(folder, out)
    toml = out / "modelhost.toml"
    text = toml.read_text(encoding="utf-8") if toml.exists() else ""
    text = (text.replace("[input]\n", '[input]\ndecode = "fast"\n', 1) if "[input]\n" in text
            else '[input]\ndecode = "fast"\n\n' + text)
    toml.write_text(text, encoding="utf-8")
    return out


def prep_mobilenet(jpeg: bytes, fast: bool = False) -> np.ndarray:
    """Stretch to 224x224 bilinear (Pillow), x / 255, ImageNet mean/std, CHW."""
    image = Image.open(io.BytesIO(jpeg))
    _draft(image, (mobilenet_model.SIZE,) * 2, fast)
    image = image.convert("RGB").resize((mobilenet_model.SIZE,) * 2, Image.Resampling.BILINEAR)
    x = np.asarray(image, np.float32) / 255.0
    return ((x - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1).astype(np.float32)


IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
PREPS: dict[str, Prep] = {"tiny": prep_tiny, "imagenet": prep_imagenet,
                          "mobilenet": prep_mobilenet}


# ----------------------------------------------------------------------------- in-process limit


def in_process_limit(model: Path, prep: Prep, jpeg: bytes, seconds: float) -> dict[str, Any]:
    """Throughput of decode + preprocess + ONNX Runtime in one Python loop, no server."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    # As the server's workers: with spinning on, the 2 threads fight whatever else runs on
    # the 2 cores (EfficientNet-Lite0 batch 1 took 29 ms instead of 15 ms on a busy machine).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    batch1 = _loop(lambda: session.run(None, {name: prep(jpeg)[None]}), 1, seconds)
    batched = [
        _loop(lambda b=b: session.run(None, {name: _batch(prep, jpeg, b)}), b, seconds)
        for b in (8, 32)
    ]
    best = max([batch1, *batched], key=lambda r: r["rps"])
    return {"batch1": batch1, "batched": batched, "best": best}


def _batch(prep: Prep, jpeg: bytes, size: int) -> np.ndarray:
    """``size`` images, each decoded and preprocessed on its own as a server would."""
    return np.stack([prep(jpeg) for _ in range(size)])


def _loop(step: Callable[[], object], batch: int, seconds: float) -> dict[str, Any]:
    step()  # warm-up: first runs allocate
    times: list[float] = []
    end = time.perf_counter() + seconds
    while (started := time.perf_counter()) < end or len(times) < 3:
        step()
        times.append(time.perf_counter() - started)
    times.sort()
    return {
        "batch": batch,
        "rps": batch * len(times) / sum(times),
        "p50_ms": loadgen.percentile(times, 50) * 1e3,
        "iterations": len(times),
    }


# ----------------------------------------------------------------------------- server


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServerRun:
    """A running ``modelhost serve``; how it stopped is filled in when the block ends."""

    base: str
    pid: int = 0
    exit_code: int | None = None
    stop_seconds: float | None = None


@contextmanager
def running_server(folder: Path, log_path: Path, ready_timeout: float, extra: list[str] = (),
                   python: str = sys.executable, env: dict[str, str] | None = None,
                   ) -> Iterator[ServerRun]:
    """``modelhost serve FOLDER EXTRA`` on a free loopback port until the block ends
    (SIGTERM), under ``python`` (another interpreter for OpenVINO, see acceleration.py)."""
    port = free_port()
    command = [python, "-m", "modelhost.cli", "serve", str(folder), "--port", str(port), *extra]
    run = ServerRun(base=f"http://127.0.0.1:{port}")
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env={**_child_env(), **(env or {})},
            cwd=ROOT,
        )
        run.pid = process.pid
        try:
            _wait_ready(run.base, process, ready_timeout, log_path)
            yield run
        finally:
            started = time.perf_counter()
            run.exit_code = _stop(process)
            run.stop_seconds = time.perf_counter() - started


def _wait_ready(base: str, process: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{_tail(log)}")
        try:
            if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"server not ready after {timeout:.0f} s:\n{_tail(log)}")


def _stop(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM (a graceful drain), SIGKILL after a minute; returns the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def model_name(base: str) -> str:
    import httpx

    return httpx.get(base + "/api/models", timeout=10).json()["models"][0]["name"]


def serve_scenario(folder: Path, jpeg: bytes, opts: Options, log: Path) -> dict[str, Any]:
    """Load levels against a fresh server (with a fresh cache: a tuned layout is measured at
    this first start); /healthz and /readyz probed beside the last (c=64) level, on the main
    port and on the ops port (``--ops-port``: a thread of its own)."""
    env = {"MODELHOST_CACHE_DIR": str(log.parent / f"cache-{log.stem}")}
    ops = free_port()
    with running_server(folder, log, opts.ready_timeout, ["--ops-port", str(ops)],
                        env=env) as server:
        name = model_name(server.base)
        layout = _layout(server.base, name)
        print(f"  layout: {layout}", flush=True)
        url = f"{server.base}/api/models/{name}/predict"
        ops_base = f"http://127.0.0.1:{ops}"
        probes = {f"{port} {path}": base + path for port, base in
                  (("main", server.base), ("ops", ops_base)) for path in ("/healthz", "/readyz")}
        target = loadgen.upload_target(url, "image", "a.jpg", jpeg)
        levels, probed = load_levels(target, opts, probes)
        wrk = wrk_run(target, 16, opts.duration) if opts.wrk else None
        _print_wrk(wrk)
    print(f"  stopped with SIGTERM: exit {server.exit_code} in {server.stop_seconds:.1f} s")
    return {
        "model": name,
        "url": url,
        "layout": layout,
        "levels": levels,
        "probes": probed,
        "wrk": wrk,
        "shutdown": {"exit_code": server.exit_code, "seconds": server.stop_seconds},
    }


def load_levels(target: loadgen.Target, opts: Options, probes: dict[str, str] | None = None,
                ) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Each level of LEVELS in turn; beside the last one the ``probes`` (label → URL), sent
    by a prober process of its own (probe.py) as a kubelet would send them."""
    levels: list[dict[str, Any]] = []
    probed: dict[str, dict[str, Any]] = {}
    for concurrency in LEVELS:
        prober = _prober(list(probes.values()), opts) if probes and \
            concurrency == LEVELS[-1] else None
        spec = loadgen.LoadSpec(target, concurrency, name=f"c{concurrency}")
        result = loadgen.run_load_sync([spec], opts.duration, opts.warmup)[0]
        _print_level(result)
        levels.append(result.to_dict())
        if prober is not None and probes:
            answers = json.loads(prober.communicate(timeout=60)[0])
            for label, url in probes.items():
                probed[label] = answers[url]
                row = answers[url]
                print(f"  {label} beside it: p50 {row['p50']:.2f} ms, p99 {row['p99']:.2f} ms"
                      f" ({row['probes']} probes, {row['failures']} failed)")
    return levels, probed


def _prober(urls: list[str], opts: Options) -> subprocess.Popen[str]:
    """probe.py over the level's whole run (warm-up and measured seconds)."""
    script = Path(__file__).resolve().parent / "probe.py"
    command = [sys.executable, str(script), "--seconds", str(opts.warmup + opts.duration),
               "--interval", str(PROBE_INTERVAL), *urls]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=_child_env())


def _layout(base: str, name: str) -> dict[str, Any]:
    """The model's layout and where each value came from (tuned, pinned, default)."""
    import httpx

    info = httpx.get(f"{base}/api/models/{name}", timeout=10).json()
    return {"layout": info.get("layout"), "source": info.get("layout_source")}


def flask_scenario(name: str, folder: Path, jpeg: bytes, opts: Options, log: Path
                   ) -> dict[str, Any]:
    """The tutorial Flask server (flask_onnx.py) on the same model, same levels."""
    port = free_port()
    script = Path(__file__).resolve().parent / "flask_onnx.py"
    command = [sys.executable, str(script), str(folder), name, str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                   env=_child_env())
        try:
            _wait_port(port, timeout=60)
            target = loadgen.upload_target(f"http://127.0.0.1:{port}/predict", "image", "a.jpg",
                                           jpeg)
            levels, _ = load_levels(target, opts)
        finally:
            process.terminate()
            process.wait()
    return {"levels": levels}


def _print_wrk(wrk: dict[str, Any] | None) -> None:
    if wrk:
        print(
            f"  wrk c=16 {wrk['rps']:8.1f} req/s  p50 {wrk['p50_ms']:7.2f} ms  "
            f"p99 {wrk['p99_ms']:7.2f} ms  non-2xx {wrk['non2xx']}",
            flush=True,
        )


def _print_level(r: loadgen.LevelResult) -> None:
    """One line per level; the client's CPU share is what it took from the server's cores."""
    errors = f"  errors {r.errors}" if r.errors else ""
    cpu_us = r.client_cpu_us_per_request
    print(
        f"  c={r.concurrency:<3} {r.rps:8.1f} req/s  p50 {r.latency_ms['p50']:7.2f} ms  "
        f"p99 {r.latency_ms['p99']:7.2f} ms  client {cpu_us:5.1f} us/req "
        f"({cpu_us * r.rps / 1e4:.1f} % of a core){errors}",
        flush=True,
    )


# ----------------------------------------------------------------------------- client check

FAST_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


class _FastProtocol(asyncio.Protocol):
    """The cheapest HTTP/1.1 keep-alive server: consume a request, write a fixed response."""

    def __init__(self) -> None:
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            length = loadgen._content_length(self.buffer[: end + 4].lower()) or 0
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            self.transport.write(FAST_RESPONSE)


def fast_server(port: int) -> None:
    """Serve FAST_RESPONSE on 127.0.0.1:port forever (run in a subprocess)."""

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_FastProtocol, "127.0.0.1", port)
        await server.serve_forever()

    with asyncio.Runner(loop_factory=loadgen._loop_factory()) as runner:
        runner.run(main())


def client_check(jpeg: bytes, opts: Options) -> list[dict[str, Any]]:
    """Client CPU per request against a server that does almost nothing: the client's cost."""
    port = free_port()
    command = [sys.executable, str(Path(__file__).resolve()), "--fast-server", str(port)]
    process = subprocess.Popen(command, env=_child_env())
    try:
        _wait_port(port)
        url = f"http://127.0.0.1:{port}/api/models/x/predict"
        target = loadgen.upload_target(url, "image", "a.jpg", jpeg)
        rows = [_check_row(target, c, "raw", opts) for c in LEVELS]
        rows.append(_check_row(target, 16, "httpx", opts))
        if opts.wrk and shutil.which("wrk"):
            rows.append(wrk_run(target, 16, opts.check_seconds))
    finally:
        process.terminate()
        process.wait()
    return rows


def _check_row(target: loadgen.Target, c: int, client: str, opts: Options) -> dict[str, Any]:
    spec = loadgen.LoadSpec(target, c, client=client)  # type: ignore[arg-type]
    result = loadgen.run_load_sync([spec], opts.check_seconds, warmup=0.5)[0]
    return {
        "client": f"loadgen-{client}",
        "concurrency": c,
        "rps": result.rps,
        "client_cpu_us_per_request": result.client_cpu_us_per_request,
        "p50_ms": result.latency_ms["p50"],
    }


def _wait_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


# ----------------------------------------------------------------------------- wrk

WRK_SCRIPT = """\
wrk.method = "POST"
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = os.getenv("BENCH_CONTENT_TYPE")
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {\\"requests\\": %d, \\"duration_us\\": %d, \\"p50_us\\": %d, \\"p90_us\\": %d, "
    .. "\\"p99_us\\": %d, \\"non2xx\\": %d, \\"socket_errors\\": %d}\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), e.status, e.connect + e.read + e.write + e.timeout))
end
"""


def wrk_run(target: loadgen.Target, concurrency: int, seconds: float) -> dict[str, Any] | None:
    """The same POST through ``wrk -t1`` (one thread, like the loadgen); None without wrk."""
    if not shutil.which("wrk"):
        print("  wrk not found (apt-get install -y wrk); skipped", flush=True)
        return None
    with tempfile.TemporaryDirectory() as tmp:
        body, script = Path(tmp, "body"), Path(tmp, "post.lua")
        body.write_bytes(target.body)
        script.write_text(WRK_SCRIPT)
        env = dict(
            os.environ,
            BENCH_BODY=str(body),
            BENCH_CONTENT_TYPE=dict(target.headers)["Content-Type"],
        )
        command = [
            "wrk",
            "-t1",
            f"-c{concurrency}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "30s",
            "-s",
            str(script),
            target.url,
        ]
        cpu_before = _children_cpu()
        output = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
        cpu = _children_cpu() - cpu_before
    stats = json.loads(re.search(r"WRKJSON (.*)", output.stdout).group(1))  # type: ignore[union-attr]
    seconds_run = stats["duration_us"] / 1e6
    return {
        "client": "wrk",
        "concurrency": concurrency,
        "rps": stats["requests"] / seconds_run,
        "client_cpu_us_per_request": cpu / max(1, stats["requests"]) * 1e6,
        "p50_ms": stats["p50_us"] / 1e3,
        "p99_ms": stats["p99_us"] / 1e3,
        "non2xx": stats["non2xx"],
        "socket_errors": stats["socket_errors"],
    }


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ----------------------------------------------------------------------------- report


def ratios(limit: dict[str, Any], server: dict[str, Any]) -> dict[str, Any]:
    """Server req/s over the in-process limit per level; c=1 latency over the batch-1 loop."""
    best, batch1 = limit["best"]["rps"], limit["batch1"]["rps"]
    per_level = {
        f"c{lv['concurrency']}": {"vs_best": lv["rps"] / best, "vs_batch1": lv["rps"] / batch1}
        for lv in server["levels"]
    }
    c1 = next(lv for lv in server["levels"] if lv["concurrency"] == 1)
    return {
        "rps_over_limit": per_level,
        "c1_p50_minus_limit_ms": c1["latency_ms"]["p50"] - limit["batch1"]["p50_ms"],
    }


def print_summary(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="modelhost vs the in-process limit (req/s; latency ms)")
    for column in (
        "model",
        "limit b1",
        "limit best",
        "c1",
        "c16",
        "c64",
        "c1 p50",
        "c1 p50 - b1",
        "c64 p99",
        "healthz / readyz p99 @c64: main; ops",
        "best ratio",
        "Flask c1 / c16",
        "c16 / Flask",
    ):
        table.add_column(column, justify="right")
    for name, result in report["models"].items():
        if "error" in result:
            table.add_row(name, "error: " + result["error"].splitlines()[0])
            continue
        table.add_row(name, *_summary_cells(result))
    console = Console(width=shutil.get_terminal_size((150, 24)).columns)
    console.print(table)
    console.print(_client_table(report["client_check"], report["image_bytes"]))


def _summary_cells(result: dict[str, Any]) -> list[str]:
    limit, server, ratio = result["limit"], result["server"], result["ratios"]
    levels = {lv["concurrency"]: lv for lv in server["levels"]}
    best_level = max(server["levels"], key=lambda lv: lv["rps"])
    probes = [server["probes"][p]["p99"] if p in server.get("probes", {})
              else float("nan") for p in ("main /healthz", "main /readyz", "ops /healthz",
                                          "ops /readyz")]
    flask = {lv["concurrency"]: lv["rps"] for lv in result.get("flask", {}).get("levels", [])}
    return [
        f"{limit['batch1']['rps']:,.0f}",
        f"{limit['best']['rps']:,.0f} (b{limit['best']['batch']})",
        *(f"{levels[c]['rps']:,.0f}" for c in LEVELS),
        f"{levels[1]['latency_ms']['p50']:.2f}",
        f"{ratio['c1_p50_minus_limit_ms']:+.2f}",
        f"{levels[64]['latency_ms']['p99']:.1f}",
        f"{probes[0]:.0f} / {probes[1]:.0f}; {probes[2]:.1f} / {probes[3]:.1f}",
        f"{best_level['rps'] / limit['best']['rps']:.2f}",
        f"{flask.get(1, float('nan')):,.0f} / {flask.get(16, float('nan')):,.0f}",
        f"{levels[16]['rps'] / flask[16]:.2f}" if 16 in flask else "",
    ]


def _client_table(rows: list[dict[str, Any]], body_bytes: int) -> Any:
    from rich.table import Table

    title = f"load generator on its own (trivial server; {body_bytes / 1e3:.0f} kB JPEG POST)"
    table = Table(title=title)
    for column in ("client", "concurrency", "req/s", "client CPU us/req", "p50 ms"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            row["client"],
            str(row["concurrency"]),
            f"{row['rps']:,.0f}",
            f"{row['client_cpu_us_per_request']:.1f}",
            f"{row['p50_ms']:.2f}",
        )
    return table


def plot(report: dict[str, Any], out: Path) -> None:
    """req/s against concurrency per model, the in-process limits as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = {k: v for k, v in report["models"].items() if "error" not in v}
    if not models:
        return
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 5), squeeze=False)
    for ax, (name, result) in zip(axes[0], models.items(), strict=True):
        _plot_model(ax, name, result)
    load = report["machine"]["load_average_at_start"][0]
    fig.suptitle(
        f"modelhost on {report['machine']['cpus']} cores, client on the same machine "
        f"(load average {load:.1f} at start)"
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _plot_model(ax: Any, name: str, result: dict[str, Any]) -> None:
    """Server points labelled with their share of the best in-process rate; limits as lines."""
    levels = result["server"]["levels"]
    xs, ys = [lv["concurrency"] for lv in levels], [lv["rps"] for lv in levels]
    limit = result["limit"]
    ax.plot(xs, ys, "o-", color="tab:blue", label="modelhost (HTTP, multipart JPEG)")
    for x, y in zip(xs, ys, strict=True):
        share = f"{y / limit['best']['rps']:.0%}"
        ax.annotate(f"{y:,.0f}\n({share})", (x, y), textcoords="offset points",
                    xytext=(0, 6), ha="center", fontsize=8)  # fmt: skip
    batched = max(limit["batched"], key=lambda r: r["rps"])
    for run, style, color in ((limit["batch1"], "--", "tab:gray"), (batched, ":", "tab:red")):
        label = f"in-process loop, batch {run['batch']}: {run['rps']:,.0f}/s"
        ax.axhline(run["rps"], ls=style, color=color, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_ylim(0, max(*ys, limit["best"]["rps"]) * 1.25)
    ax.set(title=name, xlabel="concurrent requests", ylabel="requests / s")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=8, frameon=False)
    ax.grid(alpha=0.3)


# ----------------------------------------------------------------------------- main


def run_model(name: str, folder: Path, jpeg: bytes, opts: Options, logs: Path,
              decode: str = "exact") -> dict[str, Any]:
    fast = decode == "fast"
    if fast:
        folder = fast_folder(folder, logs)
    label = f"{name} (fast)" if fast else name
    print(f"[{label}] in-process limit ...", flush=True)
    load = os.getloadavg()[0]  # recorded per phase: other work on the machine skews both
    prep = PREPS[name]
    limit = in_process_limit(folder / "model.onnx", lambda data: prep(data, fast), jpeg,
                             opts.limit_seconds)
    limit["load_average_before"] = load
    print(
        f"  batch 1: {limit['batch1']['rps']:,.0f}/s, p50 {limit['batch1']['p50_ms']:.2f} ms;"
        f" best: {limit['best']['rps']:,.0f}/s (batch {limit['best']['batch']})",
        flush=True,
    )
    print(f"[{label}] modelhost serve {folder} ...", flush=True)
    try:
        load = os.getloadavg()[0]
        server = serve_scenario(folder, jpeg, opts, logs / f"server-{name}-{decode}.log")
        server["load_average_before"] = load
    except RuntimeError as exc:
        print(f"  failed: {exc}", flush=True)
        return {"limit": limit, "error": str(exc)}
    result = {"limit": limit, "server": server, "ratios": ratios(limit, server)}
    if opts.flask and not fast:
        print(f"[{label}] the tutorial Flask server (flask_onnx.py) ...", flush=True)
        load = os.getloadavg()[0]
        flask = flask_scenario(name, folder, jpeg, opts, logs / f"flask-{name}.log")
        flask["load_average_before"] = load
        result["flask"] = flask
        result["ratios"]["over_flask"] = {
            f"c{ours['concurrency']}": ours["rps"] / theirs["rps"]
            for ours, theirs in zip(server["levels"], flask["levels"], strict=True)
        }
    return result


def machine() -> dict[str, Any]:
    import onnxruntime

    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "platform": platform.platform(),
        "load_average_at_start": os.getloadavg(),
    }


def parse_args(argv: list[str] | None = None) -> tuple[Options, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, help="seconds measured per level [15]")
    parser.add_argument("--warmup", type=float, help="seconds per level before measuring [2]")
    parser.add_argument("--quick", action="store_true", help="short runs: a smoke check")
    parser.add_argument("--models", default="tiny,imagenet,mobilenet",
                        help="comma-separated subset")
    parser.add_argument("--wrk", action="store_true", help="cross-check with wrk (c=16)")
    parser.add_argument("--decode", choices=("exact", "fast", "both"), default="exact",
                        help="the models' decode mode(s) [exact, the default]")
    parser.add_argument("--ready-timeout", type=float, default=300, help="server start limit")
    parser.add_argument("--layout", choices=("tuned", "pinned"), default="tuned",
                        help="tuned: no [workers]/[batching] in any model folder, as a user's "
                        "own model is served [default]; pinned: the folders' own tables")
    parser.add_argument("--no-flask", action="store_true",
                        help="skip the tutorial Flask server (flask_onnx.py) on each model")
    parser.add_argument("--providers", help="imagenet on these providers, e.g. cpu,openvino "
                        "(benchmarks/acceleration.py; with --precision)")
    parser.add_argument("--precision", help="imagenet at these precisions, e.g. fp32,int8")
    parser.add_argument("--openvino-python", help="interpreter whose ONNX Runtime has OpenVINO "
                        "[$MODELHOST_TEST_OPENVINO_PYTHON, else this one]")
    parser.add_argument("--fast-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = args.quick
    opts = Options(
        duration=args.duration or (3.0 if quick else 15.0),
        warmup=args.warmup if args.warmup is not None else (1.0 if quick else 2.0),
        limit_seconds=1.5 if quick else 5.0,
        check_seconds=2.0 if quick else 5.0,
        ready_timeout=args.ready_timeout,
        models=tuple(m.strip() for m in args.models.split(",") if m.strip()),
        wrk=args.wrk,
        decodes=("exact", "fast") if args.decode == "both" else (args.decode,),
        layout=args.layout,
        flask=not args.no_flask,
    )
    unknown = set(opts.models) - set(PREPS)
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; choose from {sorted(PREPS)}")
    return opts, args


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> int:
    opts, args = parse_args(argv)
    if args.fast_server:
        fast_server(args.fast_server)
        return 0
    if args.providers or args.precision:
        import acceleration

        return acceleration.main(_names(args.providers or "cpu"), _names(args.precision or "fp32"),
                                 opts, args.openvino_python)
    if os.getloadavg()[0] > 0.5 * (os.cpu_count() or 1):
        print(f"warning: load average {os.getloadavg()[0]:.1f}: numbers will be noisy")
    jpeg = photo_jpeg()
    report: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "options": {**opts.__dict__, "levels": LEVELS},
        "image_bytes": len(jpeg),
    }
    with tempfile.TemporaryDirectory(prefix="modelhost-bench-") as tmp:
        folders = prepare_models(opts.models, Path(tmp), opts.layout)
        print("load generator on its own ...", flush=True)
        report["client_check"] = client_check(jpeg, opts)
        report["models"] = {
            (n if d == "exact" else f"{n} (fast)"): run_model(n, f, jpeg, opts, Path(tmp), d)
            for n, f in folders.items() for d in opts.decodes
        }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, PLOT)
    print_summary(report)
    print(f"wrote {RESULTS.relative_to(ROOT)} and {PLOT.relative_to(ROOT)}")
    return 1 if any("error" in m for m in report["models"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
