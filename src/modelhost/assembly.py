"""The composition root: settings → model supply → worker pools → batchers → registry →
predictor → app → :class:`~modelhost.application.Application` (``build``), which starts and
stops them in one order.

Every long-lived object is built here, once, and handed to the objects that use it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import uvicorn
from fastapi import FastAPI

from .access.keys import KeyRing
from .access.limits import Limiter, limiter_for
from .application import Application, Core
from .batching.batcher import Batcher
from .feedback.journal import Journal, claim
from .feedback.recorder import PredictionLog
from .feedback.store import Store
from .http.app import create_app
from .http.auth import KeyPolicy
from .http.hosts import HostPolicy
from .http.ops_port import OpsPort
from .http.protocol import http_protocol
from .http.server import Server
from .inputs.sources import SourceReader
from .inputs.urlfetch import UrlFetcher
from .metrics import Metrics
from .predictor import Predictor
from .registry import Progress, Registry, ServedModel
from .repository import each_version
from .settings import ConfigError, Settings
from .supply.control import ModelControl
from .supply.reloader import Reloader
from .supply.specs import prepared, scan, sources
from .supply.watch import RepositoryWatcher
from .tuning import Layout, Pins, Tuner, untuned
from .types import ModelSpec
from .workers.pool import ModelPool

if TYPE_CHECKING:
    from .grpc_server import GrpcServer

log = logging.getLogger("modelhost")


def _reloader(settings: Settings, registry: Registry) -> Reloader | None:
    """The one reloader behind --watch and --model-control (None when neither is on)."""
    if settings.model_control and settings.models is None:
        raise ConfigError("--model-control needs a model folder (not the demos or a URL)")
    if not (settings.watch or settings.model_control) or settings.models is None:
        return None  # --watch on the demos or a URL: nothing to watch
    root = settings.models
    return Reloader(registry, scan=lambda: scan(root, settings), supply=_Supply(settings),
                    grace=settings.drain_grace)


def _watcher(settings: Settings, registry: Registry,
             reloader: Reloader | None) -> RepositoryWatcher | None:
    if not settings.watch or settings.models is None or reloader is None:
        return None
    return RepositoryWatcher(settings.models, registry, reloader,
                             scan(settings.models, settings))


def _control(settings: Settings, registry: Registry,
             reloader: Reloader | None) -> ModelControl | None:
    if not settings.model_control or reloader is None:
        return None
    return ModelControl(registry, reloader)


@dataclass(frozen=True)
class _Supply:
    """The one way a model is supplied, at start (the registry) and on reloads (the
    reloader): prepared by supply/ (converted, accelerated), then given its pool and batcher."""

    settings: Settings

    def prepare(self, spec: ModelSpec, progress: Callable[[Progress], None]) -> ModelSpec:
        return prepared(spec, self.settings, progress)

    def build(self, spec: ModelSpec) -> ServedModel:
        return _served_model(spec, self.settings)


def build_core(settings: Settings, specs: list[ModelSpec]) -> Core:
    """The registry (of ``specs`` as given: each is prepared in the models' start) and the
    predictor."""
    registry = Registry([_served_model(version, settings)
                         for spec in specs for version in each_version(spec)],
                        keep_going=settings.keep_going, supply=_Supply(settings))
    fetcher = (
        UrlFetcher(allow_private=settings.allow_private_urls, max_bytes=settings.url_max_bytes,
                   timeout=settings.url_timeout, max_redirects=settings.url_max_redirects)
        if settings.allow_urls else None
    )
    sources = SourceReader(path_root=settings.allow_path_root, fetcher=fetcher,
                           max_bytes=settings.max_body)
    metrics = Metrics()
    predictor = Predictor(
        registry, sources, metrics, max_pixels=settings.max_pixels,
        prediction_log=prediction_log(settings) if settings.log_predictions else None,
    )
    metrics.watch(registry.state_rows)
    if predictor.prediction_log is not None:
        metrics.watch_prediction_log(predictor.prediction_log.state)
    return Core(registry, predictor, metrics)


def prediction_log(settings: Settings) -> PredictionLog:
    """The database and the journal that feeds it (one journal folder per database URL)."""
    store = Store(settings.db)
    if settings.journal_dir is not None:
        journal = Journal(settings.journal_dir)
        journal.open()  # fails now, with a clear message, if another server holds it
    else:
        key = hashlib.sha256(settings.db.encode()).hexdigest()[:16]
        journal = claim(settings.cache_dir / "journal" / key)
    return PredictionLog(store, journal, images=settings.store_images,
                         retention_days=settings.retention_days)


def _served_model(spec: ModelSpec, settings: Settings) -> ServedModel:
    """A model's pool and batcher, laid out as set (or by default) until the registry's start
    lets its tuner choose the values left open."""
    tuner = tuner_for(spec, settings)
    layout = untuned(tuner.default, tuner.pins)
    pool = _pool(spec, settings, layout.layout.replicas, layout.layout.threads,
                 settings.worker_start_timeout)
    batcher = Batcher(pool, max_batch_size=layout.layout.max_batch_size,
                      max_delay_ms=_max_delay_ms(spec, settings), max_queue=settings.max_queue)
    return ServedModel(spec, pool, batcher, layout,
                       tuner if settings.tune and not tuner.pins.complete else None)


def tuner_for(spec: ModelSpec, settings: Settings) -> Tuner:
    """The tuner of ``spec``'s layout: the command line's values and modelhost.toml's are
    pinned; the others start at ModelConfig's defaults and may be measured."""
    config = spec.config
    pins = Pins.of(config, {"replicas": settings.replicas, "threads": settings.threads,
                            "max_batch_size": settings.max_batch_size})
    default = Layout(config.replicas, config.threads, config.max_batch_size)
    return Tuner(spec, pins, pins.over(default),
                 lambda replicas, threads, timeout: _pool(spec, settings, replicas, threads,
                                                          min(timeout,
                                                              settings.worker_start_timeout)),
                 budget=settings.tune_budget, cache_dir=settings.cache_dir,
                 max_delay_ms=_max_delay_ms(spec, settings))


def _pool(spec: ModelSpec, settings: Settings, replicas: int, threads: int,
          start_timeout: float) -> ModelPool:
    return ModelPool(spec, replicas=replicas, threads=threads, start_timeout=start_timeout,
                     max_pixels=settings.max_pixels, memory_limit=settings.worker_memory_limit,
                     hash_inputs=settings.log_predictions,
                     verbose=settings.log_level.lower() == "debug")


def _max_delay_ms(spec: ModelSpec, settings: Settings) -> float:
    return settings.max_delay_ms if settings.max_delay_ms is not None \
        else spec.config.max_delay_ms


@dataclass(frozen=True)
class _Door:
    """The API keys and the rate limiter, one of each, shared by the HTTP and gRPC ports."""

    keys: KeyRing | None
    limiter: Limiter | None

    @classmethod
    def of(cls, settings: Settings) -> _Door:
        keys = KeyRing.load(settings.api_keys) if settings.api_keys else None
        return cls(keys, limiter_for(settings))


def _app(core: Core, settings: Settings, door: _Door, control: ModelControl | None) -> FastAPI:
    return create_app(core.registry, core.predictor, core.metrics, settings, keys=door.keys,
                      limiter=door.limiter, control=control)


def _grpc(core: Core, settings: Settings, door: _Door) -> GrpcServer | None:
    """The gRPC endpoint when a port is set (grpcio loads only then)."""
    if settings.grpc_port is None:
        return None
    from .grpc_guard import Guard
    from .grpc_server import GrpcServer

    return GrpcServer(core.registry, core.predictor, core.metrics, settings,
                      guard=Guard(door.keys, door.limiter, settings.protect_ops))


def _ops(core: Core, settings: Settings, door: _Door) -> OpsPort | None:
    """The ops port when one is set (``--ops-port``)."""
    if settings.ops_port is None:
        return None
    return OpsPort(settings.host, settings.ops_port, registry=core.registry,
                   metrics=core.metrics, prediction_log=core.predictor.prediction_log,
                   hosts=HostPolicy(settings.host, settings.allowed_hosts),
                   keys=KeyPolicy(door.keys, settings.protect_ops))


def _http(core: Core, settings: Settings, app: FastAPI, loop: str) -> Server:
    protocol = http_protocol(settings)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, loop=loop, http=protocol,
        lifespan="off",  # application.py starts and stops what the app serves
        log_config=None, access_log=settings.access_log,
        # uvicorn hints an int; it hands the value to asyncio.wait_for, which takes seconds as float
        timeout_graceful_shutdown=max(1.0, settings.drain_grace),  # type: ignore[arg-type]
        server_header=False,
    )
    return Server(config, core.registry, guard=protocol.guard)


def build(settings: Settings, loop: str = "uvloop") -> Application:
    """The application for ``settings``, not yet started (``serve`` runs it in the main
    thread; tests may run it in another)."""
    core = build_core(settings, sources(settings))
    door = _Door.of(settings)
    reloader = _reloader(settings, core.registry)
    app = _app(core, settings, door, _control(settings, core.registry, reloader))
    return Application(core, _http(core, settings, app, loop), grpc=_grpc(core, settings, door),
                       ops=_ops(core, settings, door),
                       watcher=_watcher(settings, core.registry, reloader),
                       grace=settings.drain_grace)


def serve(settings: Settings) -> int:
    """Run the server until it is stopped; the process exit status (a model that could not
    be supplied raises its StartupError once the server has stopped: one line, exit 2)."""
    application = build(settings)
    application.run()
    lifecycle = application.core.registry.lifecycle
    if lifecycle.startup_error is not None:
        raise lifecycle.startup_error
    if lifecycle.fatal:
        # the failure itself was logged, once, as it happened
        log.info("stopping: a model did not load (--keep-going serves the others)")
        return 1
    return 0 if application.started else 1
