"""The running server: one object whose start and stop run in one written order.

    start: prediction log → models (supplied and loaded in the background, so the port
           opens at once) → watcher → HTTP → ops port → gRPC
    stop:  stop accepting and drain in-flight predictions (the grace period) → gRPC → HTTP
           → ops port → watcher → models → prediction log (last, so every answered record
           is stored)

``assembly.build`` makes it; ``modelhost serve`` runs it in the main thread (SIGTERM/SIGINT
start the stop, a second signal hurries it), tests run it in a thread and call
:meth:`request_stop`. The models' start is a task, not a wait: ``/healthz`` answers while models
are downloaded, converted and loaded, ``/readyz`` says which state each one is in, and the URL is
printed once they are ready. A model that fails to load (without ``--keep-going``) stops the
server the same way a signal does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import garbage, logs
from .feedback.recorder import PredictionLog
from .http.server import Server
from .metrics import Metrics
from .predictor import Predictor
from .registry import Registry

if TYPE_CHECKING:
    from .grpc_server import GrpcServer
    from .http.ops_port import OpsPort
    from .supply.watch import RepositoryWatcher

log = logging.getLogger("modelhost.server")


@dataclass(frozen=True)
class Core:
    """The long-lived objects every transport shares: one registry, one predictor."""

    registry: Registry
    predictor: Predictor
    metrics: Metrics


class Application:
    """Everything ``modelhost serve`` runs, started and stopped in one order."""

    def __init__(self, core: Core, http: Server, *, grpc: GrpcServer | None,
                 watcher: RepositoryWatcher | None, grace: float,
                 ops: OpsPort | None = None) -> None:
        self.core = core
        self.registry = core.registry
        self.predictor = core.predictor
        self.http = http
        self._grpc = grpc
        self.ops = ops
        self._watcher = watcher
        self._grace = grace
        self._log: PredictionLog | None = core.predictor.prediction_log
        self._own_process = False  # set by run(): the process is this server's alone
        self._started: list[str] = []  # what start() got through, so stop() undoes only that
        self._tasks: dict[str, asyncio.Task[None]] = {}

    @property
    def started(self) -> bool:
        """True once the HTTP port is open."""
        return self.http.started

    @property
    def url(self) -> str | None:
        return self.http.url

    # -- running ---------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until stopped, in a process of its own (``modelhost serve``): the collector's
        pauses measured, the start-up objects frozen once the models are loaded (garbage.py).
        The event loop is uvicorn's choice (uvloop by default)."""
        garbage.watch_pauses(self.core.metrics.gc_pause)
        self._own_process = True
        with asyncio.Runner(loop_factory=self.http.config.get_loop_factory()) as runner:
            runner.run(self.serve())

    async def serve(self) -> None:
        """Start, serve until a signal, :meth:`request_stop` or a fatal model failure, stop."""
        with self.http.capture_signals():  # only in the main thread (uvicorn checks)
            try:
                await self.start()
                await self.http.main_loop()
            finally:
                await self.stop()

    def request_stop(self, hurry: bool = False) -> None:
        """Begin the stop, as a signal does (from any thread); ``hurry`` as a second one."""
        self.http.force_exit = self.http.force_exit or hurry
        self.http.should_exit = True

    # -- the order -------------------------------------------------------------------------

    async def start(self) -> None:
        """Prediction log, models, watcher, HTTP, ops port, gRPC. A StartupError (a prediction
        log that cannot start, an ops port in use) stops the start with one line; models fail
        later, on their own."""
        if self._log is not None:
            await self._log.start()
            self._started.append("log")
        self._spawn("models", self.registry.start())
        if self._watcher is not None:  # --watch
            self._spawn("watcher", self._watcher.run())
        await self.http.open()
        self._started.append("http")
        if self.ops is not None:  # probes answered by a thread of their own (--ops-port)
            self.ops.start()
            self._started.append("ops")
        grpc_port = await self._grpc.start() if self._grpc is not None else None
        if self._grpc is not None:
            self._started.append("grpc")
        self._spawn("announce", self._announce(grpc_port))

    async def stop(self) -> None:
        """Drain, then gRPC, HTTP, the ops port, watcher, models and, last, the prediction
        log. After a failed start (a model that did not load or could not be supplied) nothing
        was served: no drain, and no lines beside the one that says what failed."""
        failed = self.registry.lifecycle.fatal is not None
        if "http" in self._started and not failed:
            await self._drain()
        await self._cancel("announce")
        if "grpc" in self._started and self._grpc is not None:
            await self._grpc.stop(self._grace)
        if "http" in self._started:
            await self.http.close(quiet=failed)
        if "ops" in self._started and self.ops is not None:
            await asyncio.to_thread(self.ops.stop)
        await self._cancel("watcher")
        await self._cancel("models")
        await self.registry.stop()
        await self.predictor.aclose()
        if "log" in self._started and self._log is not None:  # every answered record is in
            await self._log.stop()
        self._started.clear()

    async def _drain(self) -> None:
        """503 ``draining`` for new predictions and /readyz; in-flight ones get the grace
        period, cut short by a second signal."""
        log.info("%sdraining (grace %.0fs)",
                 f"signal {self.http.signal}: " if self.http.signal else "", self._grace)
        self.http.draining()
        drain = asyncio.ensure_future(self.registry.drain(self._grace))
        while not drain.done() and not self.http.force_exit:
            await asyncio.wait({drain}, timeout=0.1)
        drain.cancel()
        await asyncio.gather(drain, return_exceptions=True)

    async def _announce(self, grpc_port: int | None) -> None:
        """Print the URL once the models are ready (or failed with ``--keep-going``): a URL
        printed earlier would be followed by a failure, or by 503s while models load."""
        await self.registry.lifecycle.loaded.wait()
        if self.registry.lifecycle.fatal:
            return
        if self._own_process:
            log.info("%d start-up objects kept out of garbage collections",
                     garbage.freeze_start_up())
        if grpc_port is not None:  # before the URL line, which tests wait for
            logs.announce(f"modelhost serving gRPC on port {grpc_port}")
        if self.ops is not None:
            logs.announce(f"modelhost serving /healthz, /readyz and /metrics on {self.ops.url}")
        logs.announce(f"modelhost serving on {self.url}")

    def _spawn(self, name: str, work: Coroutine[Any, Any, None]) -> None:
        self._tasks[name] = asyncio.create_task(work, name=name)

    async def _cancel(self, name: str) -> None:
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
