"""What the prediction log costs: throughput with it off, on SQLite and on PostgreSQL, in the
same run, at concurrency 16, on the tiny model (the server's own overhead dominates there, so
any cost of logging shows most) or on the EfficientNet-Lite0 demo (``--model imagenet``).

Rounds alternate the three settings (off, sqlite, postgresql, off, ...) so that drift of this
shared 2-core machine hits them alike; the ratio is each setting's median over rounds against
the median with logging off. After each logged run the rows are counted in the database:
every answered prediction must be stored.

    python benchmarks/prediction_log.py              # tiny model, 3 rounds x 10 s per setting
    python benchmarks/prediction_log.py --model imagenet
    python benchmarks/prediction_log.py --rounds 1 --duration 5
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT / "src", ROOT / "benchmarks", ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import tiny_model  # noqa: E402
from run import (  # noqa: E402
    _child_env,
    _stop,
    _wait_ready,
    convert_imagenet,
    free_port,
    photo_jpeg,
)
from sqlalchemy import create_engine, func, select  # noqa: E402
from tests.postgres import postgres_server  # noqa: E402  (the tests' throwaway server)

from modelhost import loadgen  # noqa: E402
from modelhost.feedback.schema import predictions  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
CONCURRENCY = 16


def one_run(model: Path, db_args: list[str], jpeg: bytes, seconds: float, log: Path) -> dict:
    name = model.name
    port = free_port()
    command = [sys.executable, "-m", "modelhost.cli", "serve", str(model), "--port", str(port),
               *db_args]
    with log.open("ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                   env=_child_env(), cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, process, 120, log)
        target = loadgen.upload_target(f"{base}/api/models/{name}/predict", "image", "a.jpg", jpeg)
        result = loadgen.run_load_sync([loadgen.LoadSpec(target, CONCURRENCY)], seconds, 2.0)[0]
    finally:
        _stop(process)
    return result.to_dict()


def stored_rows(db_url: str) -> int:
    engine = create_engine(db_url)
    with engine.connect() as conn:
        count = conn.execute(select(func.count()).select_from(predictions)).scalar_one()
    engine.dispose()
    return int(count)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--model", choices=("tiny", "imagenet"), default="tiny",
                        help="tiny: the server's own overhead; imagenet: EfficientNet-Lite0")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop servers and PostgreSQL too
    jpeg = photo_jpeg()
    rps: dict[str, list[float]] = {"off": [], "sqlite": [], "postgresql": []}
    checks = []
    with tempfile.TemporaryDirectory() as tmp, postgres_server() as pg:
        folder = Path(tmp)
        model = (tiny_model.build(folder / "tiny") if args.model == "tiny"
                 else convert_imagenet())
        log = folder / "servers.log"
        for round_ in range(args.rounds):
            for setting in rps:
                db = (f"sqlite:///{folder / f'log-{round_}.db'}" if setting == "sqlite"
                      else pg.create_database(f"bench_{round_}") if setting == "postgresql"
                      else None)
                db_args = ["--db", db] if db else ["--no-log-predictions"]
                db_args += ["--cache-dir", str(folder / "cache")]
                result = one_run(model, db_args, jpeg, args.duration, log)
                ok = result["statuses"].get("200", 0)
                rps[setting].append(result["rps"])
                line = f"round {round_ + 1} {setting:>10}: {result['rps']:7.1f} req/s"
                if db:
                    rows = stored_rows(db)
                    checks.append({"setting": setting, "answered_200": ok, "rows": rows})
                    line += f"  (200s in the window {ok}; rows stored, warm-up incl.: {rows})"
                print(line, flush=True)
    medians = {k: statistics.median(v) for k, v in rps.items()}
    report = {
        "model": args.model, "concurrency": CONCURRENCY, "duration_s": args.duration,
        "rounds": args.rounds,
        "rps": rps, "median_rps": medians,
        "ratio_vs_off": {k: round(v / medians["off"], 3) for k, v in medians.items()},
        "stored_checks": checks, "time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    (RESULTS / f"prediction_log_{args.model}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["ratio_vs_off"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
