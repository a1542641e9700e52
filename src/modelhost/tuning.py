"""Choose a model's worker and batching layout by measuring it on this machine.

The right layout depends on the model and the machine: on 2 cores EfficientNet-Lite0 served 77
req/s at concurrency 16 with two single-threaded workers and 35 with one two-threaded worker,
and batches of 8 paid for a 9×9 model but not for EfficientNet (docs/benchmarks.md). So before
a model's serving workers start, the values of replicas × ONNX Runtime threads × max batch size
that ``modelhost.toml`` and the command line leave open are measured, never guessed:

- the candidates fill the cores without oversubscribing them (1 × cores, cores/2 × 2,
  cores × 1; 2 × 2 on 2 cores measured 43 req/s against 77 for 2 × 1), each with a max batch of
  1 and 8: four layouts on 2 cores, at most six anywhere, so each gets seconds, not moments;
- each pair of replicas × threads is one real :class:`ModelPool` in this process, fed through
  a real :class:`Batcher` (no HTTP) with a photo-like JPEG: one request at a time for the
  latency (p50; the batch size cannot matter when one request waits), then ``SATURATION``
  requests at once for each batch size's throughput, in two interleaved rounds so that a
  change in a shared machine's load falls on both batch sizes alike;
- the winner has the best throughput among the layouts whose p50 is within ``LATENCY_SLACK``
  (5 %) or ``LATENCY_SLACK_MS`` (1 ms, the issue's own latency allowance) of the best p50, so
  throughput is never bought with a slower answer for one user at a time;
- everything, the pools' start-up included, fits in the budget (20 s by default); a layout that
  fails to start, or that the budget cannot reach, is skipped with its reason.

The choice is cached in the cache folder by the model file's sha256, its ``modelhost.toml``,
the pinned values, the machine (cores, CPU model) and modelhost's version, so the next start
measures nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from . import __version__
from .batching.batcher import Batcher
from .errors import ModelhostError
from .inputs.drift import photo_like, sample_files
from .types import ModelConfig, ModelSpec, Region
from .workers.pool import LoadError, ModelPool

log = logging.getLogger("modelhost.tuning")

Origin = Literal["measured", "cache", "modelhost.toml", "command line", "default"]
FIELDS = ("replicas", "threads", "max_batch_size")
BATCH_SIZES = (1, 8)  # one image per trip, or the batch that paid for the tiny model
MAX_REPLICAS = 8  # each worker holds its own copy of the model
SATURATION = 16  # concurrent requests for throughput: the target level
# 5 %, not the first version's 25 %: measured here, in this process (no HTTP process sharing the
# cores) two single-threaded MobileNetV2 workers did 12-17 % more at c=16 than one with two
# threads and were within 25 % at c=1, so they were chosen; served over HTTP both did the same
# at c=16 (158 vs 151 req/s) while c=1 p50 was 13.2 ms against 10.2 (docs/benchmarks.md).
LATENCY_SLACK = 1.05
LATENCY_SLACK_MS = 1.0
ROUNDS = 2  # each phase is run twice, interleaved, against drifts in the machine's load
WARMUP_SHARE = 0.2  # of each phase, run but not counted (arenas, caches)
MIN_PHASE = 0.25  # seconds: a shorter phase measures noise, so the layout is skipped
STOP_RESERVE = 0.3  # seconds kept back from each pool's share for stopping its workers
REQUEST_DEADLINE = 30.0
PHOTO_SIZE = (600, 400)  # the benchmarks' photo size (a 60–72 kB JPEG)

PoolMaker = Callable[[int, int, float], ModelPool]  # replicas, threads, start timeout


@dataclass(frozen=True)
class Layout:
    """How a model is served: worker processes, runtime threads in each, largest batch."""

    replicas: int
    threads: int
    max_batch_size: int

    def __str__(self) -> str:
        workers = f"{self.replicas} worker{'s' if self.replicas > 1 else ''}"
        threads = f"{self.threads or 'auto'} thread{'' if self.threads == 1 else 's'}"
        return f"{workers} × {threads}, max batch {self.max_batch_size}"


@dataclass(frozen=True)
class Pins:
    """The layout values set explicitly, each with where it was set; they are never tuned."""

    values: Mapping[str, tuple[int, Origin]] = field(default_factory=dict)

    @classmethod
    def of(cls, config: ModelConfig, command_line: Mapping[str, int | None]) -> Pins:
        """The command line's values over ``modelhost.toml``'s (``config.pinned``)."""
        values: dict[str, tuple[int, Origin]] = {
            name: (getattr(config, name), "modelhost.toml") for name in config.pinned
            if name in FIELDS}
        values.update({name: (value, "command line") for name, value in command_line.items()
                       if value is not None})
        return cls(values)

    @property
    def complete(self) -> bool:
        return all(name in self.values for name in FIELDS)

    def over(self, layout: Layout) -> Layout:
        return replace(layout, **{name: value for name, (value, _) in self.values.items()})

    def sources(self, open_origin: Origin) -> dict[str, Origin]:
        """Where each value came from: its pin, else ``open_origin``."""
        return {name: self.values[name][1] if name in self.values else open_origin
                for name in FIELDS}

    def key(self) -> dict[str, int]:
        return {name: value for name, (value, _) in sorted(self.values.items())}


@dataclass(frozen=True)
class Measurement:
    """One layout as measured: p50 one request at a time, requests/s under saturation."""

    layout: Layout
    p50_ms: float | None = None
    per_second: float | None = None
    skipped: str = ""  # why it was not measured

    def row(self) -> dict[str, Any]:
        return {**asdict(self.layout), "p50_ms": self.p50_ms, "per_second": self.per_second,
                "skipped": self.skipped}


@dataclass(frozen=True)
class Phase:
    """One step of a measurement and the seconds it was given (or, for a start, took)."""

    kind: Literal["start", "latency", "throughput"]
    layout: Layout
    seconds: float
    requests: int = 0


@dataclass(frozen=True)
class Choice:
    """The layout in force and where each of its values came from."""

    layout: Layout
    sources: dict[str, Origin]
    seconds: float = 0.0  # spent measuring at this start
    measurements: tuple[Measurement, ...] = ()
    phases: tuple[Phase, ...] = ()
    note: str = ""  # why the open values kept their defaults, when they did

    def describe(self) -> str:
        origins = sorted(set(self.sources.values()))
        how = ", ".join(f"measured in {self.seconds:.1f} s" if o == "measured" else o
                        for o in origins)
        return f"{self.layout} ({how}{'; ' + self.note if self.note else ''})"


def untuned(default: Layout, pins: Pins, note: str = "") -> Choice:
    """The layout without measuring: the pinned values over the defaults."""
    return Choice(pins.over(default), pins.sources("default"), note=note)


def candidates(cores: int, pins: Pins) -> list[Layout]:
    """The layouts worth measuring on ``cores`` cores, pinned values applied (see the module
    docstring for why these few)."""
    counts = sorted({max(1, min(n, MAX_REPLICAS)) for n in (1, cores // 2, cores)})
    layouts = [pins.over(Layout(r, max(1, cores // r), b)) for r in counts for b in BATCH_SIZES]
    return list(dict.fromkeys(layouts))


def latency_bound(measurements: Sequence[Measurement]) -> float | None:
    """The largest p50 (ms) a winner may have: the best p50 plus 5 % or 1 ms."""
    p50s = [m.p50_ms for m in measurements if m.p50_ms is not None]
    if not p50s:
        return None
    return max(min(p50s) * LATENCY_SLACK, min(p50s) + LATENCY_SLACK_MS)


def winner(measurements: Sequence[Measurement]) -> Measurement | None:
    """Best throughput among the layouts answering one request at a time nearly as fast as
    the fastest one; None when nothing was measured."""
    bound = latency_bound(measurements)
    within = [m for m in measurements if m.p50_ms is not None and m.per_second is not None
              and bound is not None and m.p50_ms <= bound]
    return max(within, key=lambda m: m.per_second or 0.0) if within else None


def usable_cores() -> int:
    return len(os.sched_getaffinity(0))


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (part of the cache key)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def file_digest(path: Path) -> str:
    """sha256 of the model file, or of every file of a model folder (a SavedModel)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for item in files:
        digest.update(str(item.relative_to(path) if path.is_dir() else "").encode())
        with item.open("rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()


class Tuner:
    """Chooses one model's layout: pinned values as given, the open ones from the cache or
    measured. One tuner runs at a time (the registry's start awaits them in turn): each
    measurement needs the machine to itself."""

    def __init__(self, spec: ModelSpec, pins: Pins, default: Layout, make_pool: PoolMaker, *,
                 budget: float, cache_dir: Path, max_delay_ms: float) -> None:
        self.spec = spec
        self.pins = pins
        self.default = default
        self._make_pool = make_pool
        self.budget = budget
        self._cache_dir = cache_dir
        self._max_delay_ms = max_delay_ms
        self.cores = usable_cores()
        self._digest: str | None = None

    async def choose(self, fresh: bool = False) -> Choice:
        """The layout to serve with: the cached one unless ``fresh``, else measured (and then
        cached); the defaults when nothing could be measured."""
        if self.pins.complete:
            return untuned(self.default, self.pins)
        if self.spec.problem:
            return untuned(self.default, self.pins, f"the model cannot load: {self.spec.problem}")
        if not fresh and (cached := self.cached()) is not None:
            return cached
        choice = await self.measure()
        if "measured" in choice.sources.values():
            self._store(choice)
        return choice

    async def measure(self) -> Choice:
        layouts = candidates(self.cores, self.pins)
        log.info("model %s: measuring %d layouts (budget %g s; serve --no-tune skips this)",
                 self.spec.name, len(layouts), self.budget)
        load = os.getloadavg()[0]  # before measuring: the others' work, not ours
        started = time.perf_counter()
        measurements, phases = await _Measure(self, layouts).run()
        seconds = time.perf_counter() - started
        if load > self.cores:  # others' work moved every figure
            log.warning("model %s: the machine was busy when measuring began (load average "
                        "%.1f on %d cores): the choice may not hold; `modelhost tune` measures "
                        "again", self.spec.name, load, self.cores)
        best = winner(measurements)
        if best is None:
            reasons = sorted({m.skipped for m in measurements if m.skipped})
            log.warning("model %s: no layout could be measured (%s); serving the defaults",
                        self.spec.name, "; ".join(reasons))
            return replace(untuned(self.default, self.pins, "nothing could be measured"),
                           seconds=seconds, measurements=tuple(measurements),
                           phases=tuple(phases))
        return Choice(best.layout, self.pins.sources("measured"), seconds,
                      tuple(measurements), tuple(phases))

    # -- the cache ----------------------------------------------------------------------------

    def cache_key(self) -> dict[str, Any]:
        """What the choice depends on: the model, its settings, the machine, modelhost."""
        if self._digest is None:  # read the model file once (it may be hundreds of MB)
            self._digest = file_digest(self.spec.path)
        config = hashlib.sha256(repr(self.spec.config).encode()).hexdigest()[:16]
        return {"model_sha256": self._digest, "config": config, "pinned": self.pins.key(),
                "cores": self.cores, "cpu": cpu_model(), "modelhost": __version__}

    def cache_path(self, key: dict[str, Any]) -> Path:
        name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
        return self._cache_dir / "tuning" / f"{self.spec.name}-{name}.json"

    def cached(self) -> Choice | None:
        """The choice measured before for this model, settings and machine, if any."""
        key = self.cache_key()
        path = self.cache_path(key)
        try:
            record = json.loads(path.read_text())
            if record["key"] != key:
                return None
            layout = Layout(**record["layout"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("model %s: ignoring the unreadable tuning cache %s (%s)",
                        self.spec.name, path.name, exc)
            return None
        return Choice(self.pins.over(layout), self.pins.sources("cache"),
                      note=f"measured {record.get('measured_at', '?')}")

    def _store(self, choice: Choice) -> None:
        """Write the choice atomically (a crash never leaves half a file to read)."""
        key = self.cache_key()
        path = self.cache_path(key)
        record = {"key": key, "layout": asdict(choice.layout),
                  "measured_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                  "seconds": round(choice.seconds, 2), "budget": self.budget,
                  "measurements": [m.row() for m in choice.measurements]}
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary.write_text(json.dumps(record, indent=1))
            os.replace(temporary, path)
        except OSError as exc:
            log.warning("model %s: could not cache the tuned layout (%s)", self.spec.name, exc)

    # -- measuring ------------------------------------------------------------------------------

    def pool(self, replicas: int, threads: int, timeout: float) -> ModelPool:
        return self._make_pool(replicas, threads, timeout)

    def batcher(self, pool: ModelPool, max_batch_size: int) -> Batcher:
        return Batcher(pool, max_batch_size=max_batch_size, max_delay_ms=self._max_delay_ms,
                       max_queue=2 * SATURATION)

    def image(self) -> bytes:
        """The model's first ``samples/`` photo, else a photo-like JPEG of a typical size."""
        files = sample_files(self.spec.path.parent / "samples")
        return files[0].read_bytes() if files else photo_like(PHOTO_SIZE, 0)


class _Measure:
    """One measurement run: each pool of the candidates in turn, within the budget."""

    def __init__(self, tuner: Tuner, layouts: list[Layout]) -> None:
        self._tuner = tuner
        self._layouts = layouts
        self._image = tuner.image()
        self.phases: list[Phase] = []

    async def run(self) -> tuple[list[Measurement], list[Phase]]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._tuner.budget
        groups: dict[tuple[int, int], list[Layout]] = {}
        for layout in self._layouts:
            groups.setdefault((layout.replicas, layout.threads), []).append(layout)
        measurements: list[Measurement] = []
        for index, ((replicas, threads), layouts) in enumerate(groups.items()):
            share = (deadline - loop.time()) / (len(groups) - index)
            measurements += await self._pool(replicas, threads, layouts,
                                             loop.time() + share)
        return measurements, self.phases

    async def _pool(self, replicas: int, threads: int, layouts: list[Layout],
                    until: float) -> list[Measurement]:
        loop = asyncio.get_running_loop()
        slices = ROUNDS * (1 + len(layouts))  # a latency phase and a throughput phase per layout
        if until - loop.time() - STOP_RESERVE < MIN_PHASE * slices:
            return [Measurement(layout, skipped="out of budget") for layout in layouts]
        started = loop.time()
        pool = self._tuner.pool(replicas, threads, until - started)
        try:
            await pool.start()
        except LoadError as exc:
            return [Measurement(layout, skipped=f"did not start: {exc}") for layout in layouts]
        self.phases.append(Phase("start", layouts[0], loop.time() - started))
        try:
            seconds = (until - loop.time() - STOP_RESERVE) / slices
            if seconds < MIN_PHASE:
                return [Measurement(layout, skipped="out of budget") for layout in layouts]
            return await self._layouts_of(pool, layouts, seconds)
        except ModelhostError as exc:
            return [Measurement(layout, skipped=f"{exc.code}: {exc.message}")
                    for layout in layouts]
        finally:
            await pool.stop()

    async def _layouts_of(self, pool: ModelPool, layouts: list[Layout],
                          seconds: float) -> list[Measurement]:
        """The pool's latency, then each batch size's throughput, in ``ROUNDS`` rounds of
        ``seconds`` each: a change in the machine's load falls on every layout alike."""
        latencies: list[float] = []
        done = {layout: (0, 0.0) for layout in layouts}  # requests counted, seconds counted
        for _ in range(ROUNDS):
            latencies += (await self._drive(pool, layouts[0], 1, seconds, "latency"))[0]
            for layout in layouts:
                counted, window = await self._drive(pool, layout, SATURATION, seconds,
                                                    "throughput")
                done[layout] = (done[layout][0] + len(counted), done[layout][1] + window)
        p50 = sorted(latencies)[len(latencies) // 2] * 1000 if latencies else None
        return [Measurement(layout, p50, count / window if window else 0.0)
                for layout, (count, window) in done.items()]

    async def _drive(self, pool: ModelPool, layout: Layout, concurrency: int, seconds: float,
                     kind: Literal["latency", "throughput"]) -> tuple[list[float], float]:
        """``concurrency`` clients sending the photo back to back for ``seconds``: the
        latencies of the requests counted and the seconds they were counted over. Counting
        starts after the warm-up share and after the first answer (a first batch of a new
        size is slow: the runtime plans and allocates for it)."""
        loop = asyncio.get_running_loop()
        begin = loop.time()
        end = begin + seconds
        finished: list[tuple[float, float]] = []  # (when, latency)
        errors: list[ModelhostError] = []
        batcher = self._tuner.batcher(pool, layout.max_batch_size)

        async def client() -> None:
            while not errors and (sent := loop.time()) < end:
                try:
                    await batcher.submit(self._image, Region(), sent + REQUEST_DEADLINE)
                except ModelhostError as exc:  # the others stop at their next request
                    errors.append(exc)
                    return
                finished.append((loop.time(), loop.time() - sent))

        batcher.start()
        try:
            await asyncio.gather(*(client() for _ in range(concurrency)))
        finally:
            await batcher.stop()
        if errors:
            raise errors[0]
        since = max([begin + seconds * WARMUP_SHARE, *(when for when, _ in finished[:1])])
        counted = [latency for when, latency in finished if since < when <= end]
        self.phases.append(Phase(kind, layout, seconds, len(counted)))
        return counted, max(0.0, end - since)
