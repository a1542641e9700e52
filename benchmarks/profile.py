"""Where the time goes: py-spy profiles of the HTTP process and the workers under load.

For each model (tiny and mobilenet by default) served as run.py serves it (the tuned defaults,
a fresh cache), load at concurrency 16 (``--concurrency``) from :mod:`modelhost.loadgen` while
``py-spy record`` samples the server process and each worker process (100 Hz, non-blocking,
idle threads left out). Per process it prints how busy the process was (samples over wall
time; 100 % is one thread on a core all the time) and the functions where its samples fall:
by self time (the innermost frame) and inclusive (any frame on the stack). Writes the
collapsed stacks to benchmarks/results/profiles/ (``flamegraph.pl`` or speedscope open them)
and the summary to benchmarks/results/profile.json.

    python benchmarks/profile.py                   # ~2 minutes
    python benchmarks/profile.py --models tiny --duration 20
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import run

from modelhost import loadgen

RESULTS = run.ROOT / "benchmarks" / "results"
RATE = 100  # samples per second


def children(pid: int) -> list[int]:
    """The worker processes of the server ``pid`` (Linux /proc)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    pids = [int(p) for p in path.read_text().split()] if path.exists() else []
    return [p for p in pids if "modelhost.workers.worker" in _cmdline(p)]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def parse(raw: Path) -> Counter[tuple[str, ...]]:
    """Collapsed stacks: ``frame;frame;... count`` per line."""
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in raw.read_text().splitlines():
        frames, _, count = line.rpartition(" ")
        if frames:
            stacks[tuple(frames.split(";"))] += int(count)
    return stacks


def summarise(stacks: Counter[tuple[str, ...]], seconds: float, top: int = 12) -> dict[str, Any]:
    """Busy share and the top functions by self and by inclusive samples."""
    total = sum(stacks.values())
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, count in stacks.items():
        own[_short(frames[-1])] += count
        for name in {_short(f) for f in frames}:
            inclusive[name] += count

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, count / total) for name, count in counter.most_common(top)] if total else []

    return {"samples": total, "busy": total / (RATE * seconds), "self": share(own),
            "inclusive": [(n, s) for n, s in share(inclusive) if s < 0.999]}


def _short(frame: str) -> str:
    """``func (path/file.py:12)`` → ``func (path/file.py)``: lines of one function together."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name


def profile_model(name: str, folder: Path, jpeg: bytes, seconds: float, tmp: Path,
                  concurrency: int) -> dict[str, Any]:
    env = {"MODELHOST_CACHE_DIR": str(tmp / f"cache-{name}")}
    (RESULTS / "profiles").mkdir(parents=True, exist_ok=True)
    with run.running_server(folder, tmp / f"server-{name}.log", 300, env=env) as server:
        model = run.model_name(server.base)
        target = loadgen.upload_target(f"{server.base}/api/models/{model}/predict", "image",
                                       "a.jpg", jpeg)
        spec = loadgen.LoadSpec(target, concurrency, name=f"c{concurrency}")
        load: list[loadgen.LevelResult] = []
        loader = threading.Thread(target=lambda: load.extend(
            loadgen.run_load_sync([spec], seconds + 2, warmup=1.0)))
        loader.start()
        threading.Event().wait(1.5)  # the warm-up, then sample inside the measured window
        roles = {"server": server.pid, **{f"worker {i + 1}": pid
                                          for i, pid in enumerate(children(server.pid))}}
        spies = [_spy(pid, seconds, _raw_path(name, role)) for role, pid in roles.items()]
        for spy in spies:
            spy.wait()
        loader.join()
        layout = run._layout(server.base, model)["layout"]
    result: dict[str, Any] = {"rps": load[0].rps if load else None, "layout": layout,
                              "processes": {}}
    for role in roles:
        raw = _raw_path(name, role)
        result["processes"][role] = summarise(parse(raw), seconds) if raw.exists() else None
    return result


def _raw_path(name: str, role: str) -> Path:
    return RESULTS / "profiles" / f"{name}-{role.replace(' ', '')}.txt"


def _spy(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    command = ["py-spy", "record", "-p", str(pid), "-d", str(int(seconds)), "-r", str(RATE),
               "-f", "raw", "--nonblocking", "-o", str(out)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def show(name: str, result: dict[str, Any]) -> None:
    print(f"\n== {name}: {result['rps']:.0f} req/s while sampled; {result['layout']}")
    for role, summary in result["processes"].items():
        if not summary:
            print(f"  {role}: no samples")
            continue
        print(f"  {role}: busy {summary['busy']:.0%} of one core ({summary['samples']} samples)")
        for title in ("self", "inclusive"):
            print(f"    by {title}:")
            for function, part in summary[title][:10]:
                print(f"      {part:6.1%}  {function}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="tiny,mobilenet", help="comma-separated subset")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds sampled [15]")
    parser.add_argument("--concurrency", type=int, default=16, help="requests at once [16]")
    args = parser.parse_args(argv)
    if not shutil.which("py-spy"):
        print("py-spy is not installed: pip install py-spy (it is in modelhost's dev extra)")
        return 2
    names = tuple(n.strip() for n in args.models.split(",") if n.strip())
    jpeg = run.photo_jpeg()
    report: dict[str, Any] = {"machine": run.machine(), "duration": args.duration}
    with tempfile.TemporaryDirectory(prefix="modelhost-profile-") as tmp:
        folders = run.prepare_models(names, Path(tmp), "tuned")
        report["models"] = {n: profile_model(n, f, jpeg, args.duration, Path(tmp),
                                             args.concurrency)
                            for n, f in folders.items()}
    report["concurrency"] = args.concurrency
    for name, result in report["models"].items():
        show(name, result)
    (RESULTS / "profile.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
