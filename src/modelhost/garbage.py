"""Python's garbage collector in a server process: the start-up objects frozen, the pauses
measured.

A full (generation 2) collection walks every tracked object, and a server holds ~150,000 of
them after importing FastAPI, pydantic, SQLAlchemy and NumPy. Under the tiny model's load the
HTTP process ran one every 2–3 s and each stopped it (and every thread in it: the ops port's
probes too) for ~120 ms, the p99 of /healthz; 2.1 s of 20 went to collections
(docs/benchmarks.md, "Collector pauses"). Objects that live as long as the process need not be
walked: once the models are loaded, :func:`freeze_start_up` moves everything alive into the
permanent generation (``gc.freeze``), and full collections then took ~4 ms. Only the serving
process does this (``Application.run``, a worker after its warm-up): a test process that hosts
servers in threads keeps its collector as it is.
"""

from __future__ import annotations

import gc
import time

from prometheus_client import Histogram


def freeze_start_up() -> int:
    """Collect once, then keep every object alive now out of later collections; how many."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def watch_pauses(pauses: Histogram) -> None:
    """Observe each collection's duration in ``pauses``, by generation."""
    started: list[float] = [0.0]

    def timed(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses.labels(str(info["generation"])).observe(time.perf_counter() - started[0])

    gc.callbacks.append(timed)
