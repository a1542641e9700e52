"""The served models: each one's workers, batcher and readiness, and the start-up state.

A :class:`Registry` is the only place that loads, swaps and retires models (start-up,
``--watch`` and V2 model control all go through :meth:`Registry.swap` / :meth:`Registry.remove`)
and the only place that says whether a model may answer (:meth:`Registry.served`), so every
protocol refuses the same requests with the same errors. Protocols read it through
:class:`RegistryView`, which cannot change it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from .batching.batcher import Batcher
from .errors import NotFound, StartupError, Unavailable
from .preprocessing import PreprocessingError, resolve
from .types import ModelInfo, ModelSpec, Preprocessing
from .workers.pool import LoadError, ModelPool

log = logging.getLogger("modelhost.registry")


class ModelState(StrEnum):
    """Where a served model is in its life; only ``READY`` answers predictions."""

    CONVERTING = "converting"  # to ONNX, in a subprocess, before its workers start
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    REMOVED = "removed"


@dataclass
class Progress:
    """A slow start-up stage (a conversion), shown on /readyz and /api/models while it runs;
    ``cancel`` stops it when the server stops first."""

    stage: str
    timeout: float
    cancel: Callable[[], None] = lambda: None
    started: float = field(default_factory=time.monotonic)

    def describe(self) -> dict[str, Any]:
        return {"stage": self.stage, "seconds": round(time.monotonic() - self.started, 1),
                "timeout": self.timeout}


class Supply(Protocol):
    """What the registry needs of model supply (supply/) to start a model: ``prepare`` turns a
    repository spec into the one to serve (converting it, in a thread: it blocks), telling
    ``progress`` when a slow stage starts; ``build`` gives that spec its pool and batcher."""

    def prepare(self, spec: ModelSpec, progress: Callable[[Progress], None]) -> ModelSpec: ...

    def build(self, spec: ModelSpec) -> ServedModel: ...


@dataclass
class ServedModel:
    """One model as served: its workers, its batcher, and what loading taught us."""

    spec: ModelSpec
    pool: ModelPool
    batcher: Batcher
    state: ModelState = ModelState.LOADING
    error: str | None = None
    update_error: str | None = None  # a newer version that failed to load (--watch)
    info: ModelInfo | None = None
    prep: Preprocessing | None = None
    progress: Progress | None = None  # while converting

    @property
    def workers_ready(self) -> int:
        """Live, warmed-up workers: what readiness and the model listings report."""
        return self.pool.ready_workers

    @property
    def providers(self) -> list[dict[str, Any]]:
        """The execution provider each live worker runs on, and how it was chosen."""
        return self.pool.providers()


@dataclass
class Lifecycle:
    """Start-up and shutdown state that health checks, admission and the drain read."""

    draining: bool = False
    inflight: int = 0
    fatal: str | None = None
    startup_error: StartupError | None = None  # a model that could not be supplied: exit 2
    loaded: asyncio.Event = field(default_factory=asyncio.Event)


class RegistryView(Protocol):
    """What the protocols may read: models by name, the one served-model check, readiness."""

    @property
    def models(self) -> Mapping[str, ServedModel]: ...

    def model(self, name: str) -> ServedModel: ...

    def served(self, name: str, version: str | None = None) -> ServedModel: ...

    def readiness(self) -> tuple[bool, dict[str, Any]]: ...


class Registry:
    """The served models by name; loads, swaps and retires them."""

    def __init__(self, models: list[ServedModel], *, keep_going: bool,
                 supply: Supply | None = None) -> None:
        self._models = {m.spec.name: m for m in models}
        self.lifecycle = Lifecycle()
        self._keep_going = keep_going
        self._supply = supply  # None: the models' specs are served as they are

    @property
    def models(self) -> Mapping[str, ServedModel]:
        return self._models

    # -- reading ---------------------------------------------------------------------------

    def model(self, name: str) -> ServedModel:
        """The model of that name in any state; 404 when there is none."""
        model = self._models.get(name)
        if model is None:
            raise NotFound(f"no model named {name!r}")
        return model

    def served(self, name: str, version: str | None = None) -> ServedModel:
        """The model that answers for ``name`` (and ``version``, when one is named: only the
        served one answers); 404 or 503 ``not_ready`` otherwise. Every protocol calls this."""
        model = self.model(name)
        if version and version != model.spec.version:
            raise NotFound(f"version {version!r} of model {name!r} is not served")
        check_ready(model)
        return model

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready only when not draining and every model has a live, warmed-up worker."""
        models = {
            name: {"state": m.state, "workers_ready": m.workers_ready,
                   **({"progress": m.progress.describe()} if m.progress else {}),
                   **({"error": m.error} if m.error else {}),
                   **({"update_error": m.update_error} if m.update_error else {})}
            for name, m in self._models.items()
        }
        ready = (
            not self.lifecycle.draining
            and self.lifecycle.loaded.is_set()
            and all(m.state is ModelState.READY and m.workers_ready > 0
                    for m in self._models.values())
        )
        reason = "draining" if self.lifecycle.draining else None
        return ready, {"ready": ready, "reason": reason, "models": models}

    def state_rows(self) -> list[dict[str, Any]]:
        """Per-model numbers for the metrics collector."""
        return [
            {"model": n, "queue_depth": m.batcher.depth, "workers_ready": m.workers_ready,
             "load_seconds": m.pool.load_seconds, "restarts": m.pool.restarts,
             "version": m.spec.version, "format": m.spec.source_format or m.spec.format,
             "precision": m.spec.config.precision,
             "providers": ",".join(sorted({p["provider"] for p in m.providers}))}
            for n, m in self._models.items()
        ]

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Supply each model (convert it when it needs it; one conversion at a time, in
        repository order, as ``modelhost prepare`` does) and load it in its workers as soon as
        it is supplied; a failure is fatal unless ``keep_going``."""
        loads = []
        try:
            for model in list(self._models.values()):
                supplied = await self._supplied(model)
                if supplied is not None:
                    loads.append(asyncio.create_task(self._load(supplied)))
            await asyncio.gather(*loads)
        finally:
            for load in loads:
                load.cancel()
            for model in self._models.values():
                if model.progress is not None:  # stopped mid-conversion
                    model.progress.cancel()
        failed = [m for m in self._models.values() if m.state is ModelState.FAILED]
        if failed and not self._keep_going:
            self.lifecycle.fatal = "; ".join(f"{m.spec.name}: {m.error}" for m in failed)
        self.lifecycle.loaded.set()

    async def _supplied(self, model: ServedModel) -> ServedModel | None:
        """``model`` as it will be served (a new ServedModel when conversion changed its
        spec), shown as converting while that runs; None when it cannot be supplied."""
        if self._supply is None:
            return model
        loop = asyncio.get_running_loop()

        def progress(step: Progress) -> None:  # called from the supply thread
            loop.call_soon_threadsafe(self._converting, model, step)

        try:
            spec = await asyncio.to_thread(self._supply.prepare, model.spec, progress)
        except StartupError as exc:  # --runtime onnx and no conversion; INT8 not verified
            model.state, model.error, model.progress = ModelState.FAILED, str(exc), None
            if self._keep_going:
                log.error("%s", exc, extra={"fields": {"model": model.spec.name}})
            else:  # the server stops; the CLI prints this as its one line
                self.lifecycle.startup_error = self.lifecycle.startup_error or exc
                self.lifecycle.fatal = self.lifecycle.fatal or str(exc)
            return None
        new = model if spec == model.spec else self._supply.build(spec)
        new.state, new.progress = ModelState.LOADING, None
        self._models[new.spec.name] = new
        return new

    @staticmethod
    def _converting(model: ServedModel, step: Progress) -> None:
        model.state, model.progress = ModelState.CONVERTING, step

    async def swap(self, new: ServedModel, grace: float) -> bool:
        """Load and warm ``new`` beside the model of that name, then switch traffic to it in
        one step and drain the old one. If ``new`` fails, the old one keeps serving and the
        failure is reported on /readyz and /api/models."""
        await self._load(new)
        old = self._models.get(new.spec.name)
        if new.state is not ModelState.READY and old is not None \
                and old.state is ModelState.READY:
            old.update_error = f"version {new.spec.version} failed to load: {new.error}"
            return False
        self._models[new.spec.name] = new  # requests look their model up again at submit time
        if old is not None:
            await self._retire(old, grace)
        return new.state is ModelState.READY

    async def remove(self, name: str, grace: float) -> None:
        """Stop serving ``name``: new requests get 404, queued ones finish first."""
        old = self._models.pop(name, None)
        if old is not None:
            old.state = ModelState.REMOVED
            await self._retire(old, grace)

    async def drain(self, grace: float) -> None:
        """Refuse new predictions and wait (at most ``grace`` s) for in-flight ones."""
        self.lifecycle.draining = True
        until = time.monotonic() + grace
        while self.lifecycle.inflight and time.monotonic() < until:
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        for model in self._models.values():
            await model.batcher.stop()
        await asyncio.gather(*(m.pool.stop() for m in self._models.values()))

    async def _load(self, model: ServedModel) -> None:
        try:
            info = await model.pool.start()
            model.prep = resolve(model.spec.config, info)
            _check_labels(model.spec, info)
        except (LoadError, PreprocessingError) as exc:
            model.state, model.error = ModelState.FAILED, str(exc)
            await model.pool.stop()
            log.error("model %s (%s) failed to load: %s", model.spec.name, model.spec.path, exc,
                      extra={"fields": {"model": model.spec.name, "file": str(model.spec.path)}})
            return
        model.info, model.state = info, ModelState.READY
        model.batcher.start()
        log.info("model %s loaded%s", model.spec.name,
                 f"; decode fast: {info.drift.describe()}" if info.drift else "",
                 extra={"fields": _summary(model)})
        if "serving on cpu" in info.provider_note:  # the listed fallback: said, never silent
            log.warning("model %s: %s", model.spec.name, info.provider_note)

    async def _retire(self, old: ServedModel, grace: float) -> None:
        until = time.monotonic() + grace
        while (old.batcher.depth or old.pool.inflight) and time.monotonic() < until:
            await asyncio.sleep(0.02)
        await old.batcher.stop()
        await old.pool.stop()
        log.info("model %s version %s stopped", old.spec.name, old.spec.version)


def check_ready(model: ServedModel) -> None:
    """404 for a removed model, 503 ``not_ready`` for one loading or failed."""
    if model.state is ModelState.REMOVED:
        raise NotFound(f"no model named {model.spec.name!r}")
    if model.state is ModelState.FAILED:
        raise Unavailable(f"model {model.spec.name!r} failed to load", "not_ready",
                          retry_after=30.0)
    if model.state is not ModelState.READY or model.info is None:
        raise Unavailable(f"model {model.spec.name!r} is still {model.state}", "not_ready")


def _check_labels(spec: ModelSpec, info: ModelInfo) -> None:
    classes = info.outputs[0].shape[-1] if info.outputs and info.outputs[0].shape else -1
    if spec.labels and classes > 0 and classes != len(spec.labels):
        raise LoadError(
            f"labels.txt: {len(spec.labels)} labels, "
            f"but the model has {classes} outputs"
        )


def _summary(model: ServedModel) -> dict[str, Any]:
    info, prep = model.info, model.prep
    assert info is not None and prep is not None
    return {
        "model": model.spec.name, "version": model.spec.version, "format": model.spec.format,
        "file": model.spec.path.name, "load_seconds": round(model.pool.load_seconds, 3),
        "inputs": [[t.name, t.dtype, list(t.shape)] for t in info.inputs],
        "outputs": [[t.name, t.dtype, list(t.shape)] for t in info.outputs],
        "labels": len(model.spec.labels), "parameters": info.parameters,
        "preprocessing": {"whole_image": True} if info.whole_image else {
            "size": list(prep.size), "layout": prep.layout, "scaling": prep.scaling,
            "resize": prep.resize, "pipeline": prep.pipeline or "default",
            "decode": prep.decode},
        **({"decode_drift": info.drift.describe()} if info.drift else {}),
        "workers": model.workers_ready,
        "providers": [p["provider"] for p in model.providers],
        "provider_note": info.provider_note, "precision": model.spec.config.precision,
    }
