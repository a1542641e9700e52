"""The server side of a model's worker processes: spawn, dispatch, supervise, restart.

Each :class:`Worker` is one child process (``python -m modelhost.workers.worker``) joined by a
socket pair. The server side of the socket is an asyncio stream: frames are written without
blocking the loop and read as they complete, with no threads in between (the first version used
a reader and a writer thread per worker; each thread hop cost ~1 ms on these machines, half of a
tiny model's whole request). The child speaks ``multiprocessing.connection`` framing (4-byte
big-endian length, then the frame), so it can stay a plain blocking loop.

A worker that dies fails only its in-flight batches (503 ``worker_crashed``) and
:class:`ModelPool` restarts it with back-off; a worker that keeps a batch past its deadline is
killed and replaced the same way. An input that was running when two workers died is
quarantined (422 ``input_quarantined``), so a poison input cannot kill worker after worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import os
import socket
import struct
import subprocess
import sys
import time
from dataclasses import replace
from multiprocessing import shared_memory
from pathlib import Path

from ..errors import InternalError, InvalidInput, ModelhostError, StartupError, Unavailable
from ..runtimes.providers import device_env
from ..types import ModelInfo, ModelSpec, Region
from .messages import (
    Batch,
    BatchFailed,
    Item,
    LoadFailed,
    RawTensor,
    Ready,
    Result,
    Start,
    Stop,
    decode,
    encode,
    tensor,
)
from .shm import SHM_MIN_BYTES, SlotPool

log = logging.getLogger("modelhost.workers")

MAX_INFLIGHT = 2  # one batch running, one waiting in the pipe: the worker never idles
HANG_GRACE = 2.0  # seconds past a batch's deadline before its worker counts as hung
_batch_ids = itertools.count(1)
_LENGTH = struct.Struct("!i")  # multiprocessing.connection's frame header
QUARANTINE_AFTER = 2  # worker deaths with the same input in flight
# How much lower than the server the workers run. The HTTP process is the front of every
# request: when the workers' threads keep both cores busy, an equal share left it (and its
# probes) waiting for a core. At +5, with the MobileNetV2-class model saturated at c=64,
# /healthz p99 went from 21.5-22.9 ms to 11.6-11.8 ms at the same req/s; the tiny model's
# /healthz p50 from 9.2-9.4 ms to 3.1-3.8 ms (benchmarks/run.py, docs/benchmarks.md).
WORKER_NICE = 5
BACKGROUND_NICE = 19  # how much lower a background (shadow) version's workers run


def digest(data: bytes) -> bytes:
    """Identity of an input for the poison quarantine (computed only when a worker dies)."""
    return hashlib.blake2b(data, digest_size=16).digest()


class LoadError(StartupError):
    """A worker could not load its model; the message names the file and the reason."""


class Worker:
    """One worker process, seen from the server."""

    def __init__(self, start: Start, env: dict[str, str] | None = None) -> None:
        self.spec = start.spec
        self._env = env  # added to the server's environment (a pinned GPU), or None
        self._start = start  # the first frame it is sent: model, threads, limits
        self._images: dict[int, list[bytes]] = {}  # in-flight inputs, suspects if it dies
        self.suspects: set[bytes] = set()  # digests of the inputs it was running when it died
        self._loop = asyncio.get_running_loop()
        self._inflight: dict[int, tuple[asyncio.Future, float]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._slots = SlotPool()
        self._slot_of: dict[int, shared_memory.SharedMemory] = {}
        self._ready: asyncio.Future[Ready] = self._loop.create_future()
        self.exited: asyncio.Future[int | None] = self._loop.create_future()
        self.pid: int | None = None
        self.niceness: int | None = None  # as set by the pool (None: not set yet)

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    @property
    def info(self) -> ModelInfo | None:
        """What this worker loaded (its provider included), once it is ready."""
        ready = self._ready
        return ready.result().info if ready.done() and not ready.exception() else None

    @property
    def alive(self) -> bool:
        return self._ready.done() and not self._ready.exception() and not self.exited.done()

    async def start(self, timeout: float) -> Ready:
        """Spawn the process and wait until it has loaded and warmed up the model."""
        ours, theirs = socket.socketpair()
        with theirs:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "modelhost.workers.worker", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self._env} if self._env else None,
            )
        self.pid = self._process.pid
        reader, self._writer = await asyncio.open_connection(sock=ours)
        self._send(encode(self._start))
        self._reading = self._loop.create_task(self._read_frames(reader))
        try:
            return await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        except TimeoutError:
            self.kill()
            raise LoadError(
                f"{self.spec.path.name}: loading took longer than {timeout:g}s"
            ) from None

    def submit(self, images: list[tuple[bytes, Region | RawTensor]],
               deadline: float) -> asyncio.Future:
        """Send encoded images to decode and run; the future resolves to
        ``(Result, output rows)``."""
        batch_id = next(_batch_ids)
        future = self._loop.create_future()
        self._inflight[batch_id] = (future, deadline)
        self._images[batch_id] = [data for data, _ in images]
        items, offset = [], 0
        for data, region in images:
            items.append(Item(offset, offset + len(data), region))
            offset += len(data)
        parts = [data for data, _ in images]
        if offset >= SHM_MIN_BYTES:
            slot = self._slots.write(parts, offset)
            self._slot_of[batch_id] = slot
            self._send(encode(Batch(batch_id, tuple(items), slot.name)))
        else:
            self._send(encode(Batch(batch_id, tuple(items)), b"".join(parts)))
        return future

    def _send(self, frame: bytes) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(_LENGTH.pack(len(frame)))
            self._writer.write(frame)

    def overdue(self, now: float) -> bool:
        """True when a batch has run well past its deadline: the worker is hung."""
        return any(deadline + HANG_GRACE < now for _, deadline in self._inflight.values())

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self._process.kill()

    async def stop(self, timeout: float = 5.0) -> None:
        """Ask the worker to exit; kill it if it does not within ``timeout``."""
        if self.exited.done():
            return
        self._send(encode(Stop()))
        try:
            await asyncio.wait_for(asyncio.shield(self.exited), timeout)
        except TimeoutError:
            self.kill()
            await self.exited

    async def _read_frames(self, reader: asyncio.StreamReader) -> None:
        """Deliver frames until the worker's end closes, then report its exit."""
        try:
            while True:
                (size,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
                self._on_frame(await reader.readexactly(size))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        try:
            exitcode = await asyncio.wait_for(asyncio.to_thread(self._process.wait), 5.0)
        except TimeoutError:
            exitcode = None
        self._on_exit(exitcode)

    # -- event loop side -----------------------------------------------------------------

    def _on_frame(self, frame: bytes) -> None:
        header, payload = decode(frame)
        match header:
            case Result(batch_id=batch_id):
                self._settle(batch_id, result=(header, tensor(header, payload)))
            case BatchFailed(batch_id=batch_id, message=message):
                log.error("model %s failed on a batch: %s", self.spec.name, message)
                self._settle(batch_id, error=InternalError("the model failed on this input",
                                                           "model_failed"))
            case Ready():
                self._ready.set_result(header)
            case LoadFailed(message=message):
                name = self.spec.path.name  # modelhost's own refusals already start with it
                self._ready.set_exception(LoadError(
                    message if message.startswith(name) else f"{name}: {message}"))

    def _settle(self, batch_id: int, result=None, error: ModelhostError | None = None) -> None:
        future, _ = self._inflight.pop(batch_id, (None, 0.0))
        self._images.pop(batch_id, None)
        slot = self._slot_of.pop(batch_id, None)
        if slot is not None:
            self._slots.release(slot)
        if future is None or future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def _on_exit(self, exitcode: int | None) -> None:
        if self._writer is not None:
            self._writer.close()
        crashed = Unavailable(
            f"the worker running model {self.spec.name!r} stopped; it is being restarted",
            "worker_crashed",
            retry_after=1.0,
        )
        if self._images:  # the worker runs batches in order: the oldest was running
            self.suspects = {digest(data) for data in self._images[min(self._images)]}
        for batch_id in list(self._inflight):
            self._settle(batch_id, error=crashed)
        self._slots.close()
        if not self._ready.done():
            self._ready.set_exception(
                LoadError(f"{self.spec.path.name}: the worker exited while loading "
                          f"(exit code {exitcode})")
            )
        if self._ready.done():
            self._ready.exception()  # mark it retrieved: start() may have stopped waiting
        if not self.exited.done():
            self.exited.set_result(exitcode)


class ModelPool:
    """All worker processes of one model: dispatch to the least busy, restart the dead."""

    def __init__(self, spec: ModelSpec, replicas: int, threads: int, start_timeout: float,
                 max_pixels: int, memory_limit: int | None = None,
                 hash_inputs: bool = False, verbose: bool = False) -> None:
        self.spec = spec
        self._start = Start(spec, threads, max_pixels, memory_limit, hash_inputs, verbose)
        self._deaths: dict[bytes, int] = {}  # input digest → workers that died running it
        self.quarantined: set[bytes] = set()
        self._replicas = replicas
        self._start_timeout = start_timeout
        self._workers: list[Worker | None] = [None] * replicas
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._stopping = False
        self._background = False  # a shadow version: its workers yield the CPU to the others
        self.restarts = 0  # read by the metrics collector at scrape time
        self.info: ModelInfo | None = None
        self.load_seconds = 0.0

    @property
    def ready_workers(self) -> int:
        return sum(1 for w in self._workers if w is not None and w.alive)

    @property
    def layout(self) -> dict[str, int]:
        """How many worker processes, and the runtime threads in each."""
        return {"replicas": self._replicas, "threads": self._start.threads}

    def resize(self, replicas: int, threads: int) -> None:
        """Take the layout the tuner chose; only before :meth:`start` (running workers keep
        theirs)."""
        if any(w is not None for w in self._workers):
            raise RuntimeError("a started pool cannot be resized")
        self._replicas = replicas
        self._workers = [None] * replicas
        self._start = replace(self._start, threads=threads)

    @property
    def inflight(self) -> int:
        """Batches sent to this pool's workers and not answered yet."""
        return sum(w.inflight for w in self._workers if w is not None)

    async def start(self) -> ModelInfo:
        """Start every replica; raise LoadError if any fails (the others are stopped)."""
        if self.spec.problem:
            raise LoadError(self.spec.problem)
        started = time.perf_counter()
        workers = [Worker(self._start, device_env(slot, self.spec.config))
                   for slot in range(self._replicas)]
        results = await asyncio.gather(
            *(w.start(self._start_timeout) for w in workers), return_exceptions=True
        )
        for worker in workers:
            self._prioritise(worker)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await asyncio.gather(*(w.stop() for w in workers), return_exceptions=True)
            raise errors[0] if isinstance(errors[0], LoadError) else LoadError(str(errors[0]))
        self.load_seconds = time.perf_counter() - started
        ready = results[0]
        assert isinstance(ready, Ready)
        self.info = ready.info
        self._workers = list(workers)
        self._tasks = [asyncio.create_task(self._supervise(i)) for i in range(self._replicas)]
        self._tasks.append(asyncio.create_task(self._watch_hangs()))
        return self.info

    async def acquire(self) -> Worker:
        """The least busy live worker with room for one more batch; waits while all are busy."""
        while True:
            live = [w for w in self._workers if w is not None and w.alive]
            if not live:
                raise Unavailable(
                    f"no worker of model {self.spec.name!r} is running; it is being restarted",
                    "worker_crashed",
                    retry_after=2.0,
                )
            best = min(live, key=lambda w: w.inflight)
            if best.inflight < MAX_INFLIGHT:
                return best
            self._changed.clear()
            await self._changed.wait()

    def submit(self, worker: Worker, images: list[tuple[bytes, Region | RawTensor]],
               deadline: float) -> asyncio.Future:
        future = worker.submit(images, deadline)
        future.add_done_callback(lambda _: self._changed.set())
        return future

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(
            *(w.stop() for w in self._workers if w is not None), return_exceptions=True
        )

    def providers(self) -> list[dict]:
        """The execution provider each live worker runs on, and how it was chosen."""
        return [{"pid": w.pid, "provider": w.info.provider, "note": w.info.provider_note}
                for w in self._workers if w is not None and w.alive and w.info is not None]

    def set_background(self, on: bool) -> None:
        """Run this pool's workers at the lowest CPU priority (``on``: a shadow version) or at
        a workers' usual one. A shadow's work competes with the answering version's for the
        same cores: without this it raised the answers' p50 at concurrency 1 by 28–43 %
        (benchmarks/versions.py)."""
        if on != self._background:
            self._background = on
            for worker in self._workers:
                if worker is not None:
                    self._prioritise(worker)

    def _prioritise(self, worker: Worker) -> None:
        """Workers run ``WORKER_NICE`` below the server, a shadow's ``BACKGROUND_NICE``."""
        if worker.pid is None:
            return
        niceness = os.getpriority(os.PRIO_PROCESS, 0) + (
            BACKGROUND_NICE if self._background else WORKER_NICE)  # over the server's own
        if niceness == worker.niceness:
            return
        try:
            _renice(worker.pid, niceness)
            worker.niceness = niceness
        except ProcessLookupError:
            pass
        except PermissionError:  # raising a priority back needs CAP_SYS_NICE
            log.warning("model %s version %s: worker %s keeps its lower CPU priority until it "
                        "restarts (restoring it needs CAP_SYS_NICE)", self.spec.name,
                        self.spec.version, worker.pid)

    def pids(self) -> list[int]:
        return [w.pid for w in self._workers if w is not None and w.pid and w.alive]

    def resident_mb(self) -> float | None:
        """The live workers' resident memory (RSS) in MiB, from Linux's /proc: what one more
        served version costs; None where /proc cannot tell."""
        total = 0
        for pid in self.pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                return None
            total += next((int(line.split()[1]) for line in status.splitlines()
                           if line.startswith("VmRSS:")), 0)
        return round(total / 1024, 1)

    async def _supervise(self, slot: int) -> None:
        """Wait for the worker in ``slot`` to die, then restart it with back-off."""
        backoff = 0.5
        while not self._stopping:
            worker = self._workers[slot]
            assert worker is not None
            born = time.monotonic()
            exitcode = await asyncio.shield(worker.exited)  # cancelling us must not cancel it
            if self._stopping:
                return
            self._changed.set()
            self._note_suspects(worker.suspects)
            if time.monotonic() - born > 60:
                backoff = 0.5
            log.warning("worker of model %s (pid %s) exited with code %s; restarting in %.1fs",
                        self.spec.name, worker.pid, exitcode, backoff)
            self.restarts += 1
            self._workers[slot] = None
            self._workers[slot] = await self._restart(backoff, slot)
            backoff = min(backoff * 2, 30.0)
            self._changed.set()

    def refuse_poison(self, data: bytes) -> None:
        """422 ``input_quarantined`` for an input that was in flight when two workers died:
        sending it again would only kill a third (and then every replacement)."""
        if self.quarantined and digest(data) in self.quarantined:
            raise InvalidInput("this input stopped the model's workers before; it is refused",
                               "input_quarantined")

    def _note_suspects(self, suspects: set[bytes]) -> None:
        for item in suspects:
            self._deaths[item] = self._deaths.get(item, 0) + 1
            if self._deaths[item] >= QUARANTINE_AFTER and item not in self.quarantined:
                self.quarantined.add(item)
                log.error("an input stopped %d workers of model %s; quarantined",
                          self._deaths[item], self.spec.name)
        if len(self._deaths) > 10_000:  # bounded memory: forget the oldest one-off suspects
            for item in list(self._deaths)[:5_000]:
                if item not in self.quarantined:
                    del self._deaths[item]

    async def _restart(self, backoff: float, slot: int) -> Worker:
        while True:
            await asyncio.sleep(backoff)
            worker = Worker(self._start, device_env(slot, self.spec.config))
            try:
                await worker.start(self._start_timeout)
                self._prioritise(worker)
                return worker
            except LoadError as exc:
                log.error("restarting a worker of model %s failed: %s", self.spec.name, exc)
                backoff = min(backoff * 2, 30.0)

    async def _watch_hangs(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(0.25)
            for worker in self._workers:
                if worker is not None and worker.alive and worker.overdue(loop.time()):
                    log.error("worker of model %s (pid %s) is hung past its deadline; killing it",
                              self.spec.name, worker.pid)
                    worker.kill()


def _renice(pid: int, niceness: int) -> None:
    """Set the niceness of every thread of process ``pid``. On Linux a niceness belongs to a
    thread: ``setpriority(PRIO_PROCESS, pid)`` changes only the main thread's, and the
    runtime's compute threads (ONNX Runtime's intra-op pool) and the decode thread kept the
    server's priority — measured: a shadow worker's two ORT threads stayed at 0 under a
    "nice 19" main thread. The worker starts all its threads before it reports ready."""
    try:
        threads = [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:  # not Linux, or the process is gone (then the call below fails)
        threads = [pid]
    for tid in threads:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, niceness)
        except ProcessLookupError:  # a thread that ended meanwhile
            if tid == pid:
                raise
