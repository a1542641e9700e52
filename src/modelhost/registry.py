"""The served models: each one's workers, batcher and readiness, and the start-up state.

A :class:`Registry` is the only place that loads, swaps and retires models (start-up,
``--watch`` and V2 model control all go through :meth:`Registry.swap` / :meth:`Registry.remove`)
and the only place that says whether a model may answer (:meth:`Registry.served`), so every
protocol refuses the same requests with the same errors. Protocols read it through
:class:`RegistryView`, which cannot change it.

A model may serve several versions side by side (``[versions]`` in its modelhost.toml), each a
:class:`ServedModel` with its own workers, batcher and readiness. ``models`` holds each model's
highest served version (listings, metrics, ``--watch``); :meth:`Registry.served` picks the
version a request names, by number or label, or the one its routing policy chooses
(``routing.py``), so version choice is the same on every protocol.
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
from .routing import choose, labelled
from .tuning import Choice, Tuner
from .types import ModelInfo, ModelSpec, Preprocessing, VersionPolicy
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
    layout: Choice  # the layout in force and where each value came from
    tuner: Tuner | None = None  # measures the values modelhost.toml and the flags leave open
    state: ModelState = ModelState.LOADING
    error: str | None = None
    update_error: str | None = None  # a newer version that failed to load (--watch)
    info: ModelInfo | None = None
    prep: Preprocessing | None = None
    progress: Progress | None = None  # while converting or measuring the layout

    @property
    def workers_ready(self) -> int:
        """Live, warmed-up workers: what readiness and the model listings report."""
        return self.pool.ready_workers

    @property
    def providers(self) -> list[dict[str, Any]]:
        """The execution provider each live worker runs on, and how it was chosen."""
        return self.pool.providers()

    async def choose_layout(self) -> None:
        """Settle the layout before the serving workers start: cached, else measured."""
        if self.tuner is None:
            return
        self.progress = Progress("measuring the layout", self.tuner.budget)  # on /readyz
        try:
            self.layout = await self.tuner.choose()
        finally:
            self.progress = None
        self.pool.resize(self.layout.layout.replicas, self.layout.layout.threads)
        self.batcher.resize(self.layout.layout.max_batch_size)


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

    def served(self, name: str, version: str | None = None, *, label: str | None = None,
               client: str | None = None) -> ServedModel: ...

    def versions(self, name: str) -> dict[str, ServedModel]: ...

    def policy(self, name: str) -> VersionPolicy: ...

    def readiness(self) -> tuple[bool, dict[str, Any]]: ...


class Registry:
    """The served models by name; loads, swaps and retires them."""

    def __init__(self, models: list[ServedModel], *, keep_going: bool,
                 supply: Supply | None = None) -> None:
        self._models: dict[str, ServedModel] = {}  # each model's highest served version
        self._others: dict[str, dict[str, ServedModel]] = {}  # its other served versions
        self._policies: dict[str, VersionPolicy] = {}
        self._earlier: dict[str, list[VersionPolicy]] = {}  # replaced at run time, for rollback
        for model in sorted(models, key=lambda m: int(m.spec.version)
                            if m.spec.version.isdigit() else 0):
            self._add(model)
        self.lifecycle = Lifecycle()
        self._keep_going = keep_going
        self._supply = supply  # None: the models' specs are served as they are

    def _add(self, model: ServedModel) -> None:
        """Serve ``model`` as the highest version of its name (the one before it, if any,
        joins the others: models arrive in version order)."""
        name = model.spec.name
        previous = self._models.get(name)
        if previous is not None:
            self._others.setdefault(name, {})[previous.spec.version] = previous
        self._models[name] = model
        self._policies[name] = model.spec.policy or _alone(model.spec.version)
        self._prioritise(name)

    def _prioritise(self, name: str) -> None:
        """A shadow version's workers run at a lower CPU priority than the versions that
        answer (its work must not slow their answers); the others at the server's own."""
        shadow = self._policies[name].shadow
        for version, model in self.versions(name).items():
            model.pool.set_background(version == shadow)

    @property
    def models(self) -> Mapping[str, ServedModel]:
        return self._models

    @property
    def every_version(self) -> list[ServedModel]:
        """Every served version of every model (what starts, stops and must be ready)."""
        return [m for name in self._models for m in self.versions(name).values()]

    # -- reading ---------------------------------------------------------------------------

    def model(self, name: str) -> ServedModel:
        """The model of that name (its highest served version) in any state; 404 when there
        is none."""
        model = self._models.get(name)
        if model is None:
            raise NotFound(f"no model named {name!r}")
        return model

    def versions(self, name: str) -> dict[str, ServedModel]:
        """The served versions of ``name``, lowest first; 404 for an unknown model."""
        top = self.model(name)
        return {**self._others.get(name, {}), top.spec.version: top}

    def policy(self, name: str) -> VersionPolicy:
        """How requests for ``name`` are shared among its versions (404 for an unknown one)."""
        self.model(name)
        return self._policies[name]

    def served(self, name: str, version: str | None = None, *, label: str | None = None,
               client: str | None = None) -> ServedModel:
        """The served version that answers a request for ``name``: the ``version`` or
        ``label`` it names, else the one the routing policy chooses (by split, sticky per
        ``client``); 404 for an unknown model, version or label, 503 ``not_ready`` when that
        version cannot answer yet. Every protocol calls this."""
        versions, policy = self.versions(name), self._policies[name]
        if label is not None:
            version = labelled(policy, label)
            if version is None:
                raise NotFound(f"model {name!r} has no version labelled {label!r}")
        model = versions.get(version or choose(policy, client))
        if model is None:
            raise NotFound(f"version {version!r} of model {name!r} is not served")
        check_ready(model)
        return model

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready only when not draining and every model has a live, warmed-up worker."""
        models = {name: {**_health(m), **self._versions_health(name)}
                  for name, m in self._models.items()}
        ready = (
            not self.lifecycle.draining
            and self.lifecycle.loaded.is_set()
            and all(m.state is ModelState.READY and m.workers_ready > 0
                    for m in self.every_version)
        )
        reason = "draining" if self.lifecycle.draining else None
        return ready, {"ready": ready, "reason": reason, "models": models}

    def _versions_health(self, name: str) -> dict[str, Any]:
        """Each served version's health, for a model serving more than one."""
        versions = self.versions(name)
        if len(versions) == 1:
            return {}
        return {"versions": {v: _health(m) for v, m in versions.items()}}

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

    # -- routing at run time ---------------------------------------------------------------

    def reroute(self, name: str, policy: VersionPolicy) -> None:
        """Route requests for ``name`` by ``policy`` from now on (the policy it replaces is
        kept for :meth:`rollback`). One assignment: each request looks its policy up once, so
        a request in flight finishes on the version it was given and none fails."""
        previous = self.policy(name)
        self._policies[name] = policy
        self._earlier.setdefault(name, []).append(previous)
        self._prioritise(name)

    def earlier(self, name: str) -> VersionPolicy | None:
        """The policy the last run-time change replaced (None: no change since start)."""
        self.model(name)
        earlier = self._earlier.get(name)
        return earlier[-1] if earlier else None

    def rollback(self, name: str) -> None:
        """Go back to the policy before the last run-time change (see :meth:`earlier`)."""
        self.policy(name)
        self._policies[name] = self._earlier[name].pop()
        self._prioritise(name)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Supply each served version (convert it when it needs it; one conversion at a time,
        in repository order, as ``modelhost prepare`` does), choose its layout (cached, or
        measured: one version at a time, never beside a conversion) and load it in its
        workers; a failure is fatal unless ``keep_going``."""
        loads = []
        try:
            for model in self.every_version:
                supplied = await self._supplied(model)
                if supplied is not None:
                    await supplied.choose_layout()
                    loads.append(asyncio.create_task(self._load(supplied)))
            await asyncio.gather(*loads)
        finally:
            for load in loads:
                load.cancel()
            for model in self.every_version:
                if model.progress is not None:  # stopped mid-conversion
                    model.progress.cancel()
        failed = [m for m in self.every_version if m.state is ModelState.FAILED]
        if failed and not self._keep_going:
            self.lifecycle.fatal = "; ".join(f"{m.spec.name} version {m.spec.version}: "
                                             f"{m.error}" for m in failed)
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
        self._put(model, new)
        return new

    def _put(self, old: ServedModel, new: ServedModel) -> None:
        """``new`` in the place of ``old`` (the highest version, or one of the others), with
        the priority of its role (a shadow's workers in the background)."""
        name = old.spec.name
        if self._models.get(name) is old:
            self._models[name] = new
        else:
            self._others[name][old.spec.version] = new
        self._prioritise(name)

    @staticmethod
    def _converting(model: ServedModel, step: Progress) -> None:
        model.state, model.progress = ModelState.CONVERTING, step

    async def swap(self, new: ServedModel, grace: float) -> bool:
        """Load and warm ``new`` beside the model of that name, then switch traffic to it in
        one step and drain the old one. If ``new`` fails, the old one keeps serving and the
        failure is reported on /readyz and /api/models. ``new`` takes the place of the highest
        served version (``--watch`` and V2 model control reload that one; the model's other
        served versions keep serving)."""
        await new.choose_layout()
        await self._load(new)
        old = self._models.get(new.spec.name)
        if new.state is not ModelState.READY and old is not None \
                and old.state is ModelState.READY:
            old.update_error = f"version {new.spec.version} failed to load: {new.error}"
            return False
        self._models[new.spec.name] = new  # requests look their model up again at submit time
        self._policies[new.spec.name] = _kept(self._policies.get(new.spec.name), new,
                                              self._others.get(new.spec.name, {}))
        self._earlier.pop(new.spec.name, None)  # earlier policies were for the old versions
        self._prioritise(new.spec.name)
        if old is not None:
            await self._retire(old, grace)
        return new.state is ModelState.READY

    async def remove(self, name: str, grace: float) -> None:
        """Stop serving ``name``: new requests get 404, queued ones finish first."""
        old = self._models.pop(name, None)
        others = self._others.pop(name, {})
        self._policies.pop(name, None)
        self._earlier.pop(name, None)
        for model in [*others.values(), *([old] if old is not None else [])]:
            model.state = ModelState.REMOVED
            await self._retire(model, grace)

    async def drain(self, grace: float) -> None:
        """Refuse new predictions and wait (at most ``grace`` s) for in-flight ones."""
        self.lifecycle.draining = True
        until = time.monotonic() + grace
        while self.lifecycle.inflight and time.monotonic() < until:
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        for model in self.every_version:
            await model.batcher.stop()
        await asyncio.gather(*(m.pool.stop() for m in self.every_version))

    async def _load(self, model: ServedModel) -> None:
        try:
            info = await model.pool.start()
            model.prep = resolve(model.spec.config, info)
            _check_labels(model.spec, info)
        except (LoadError, PreprocessingError) as exc:
            model.state, model.error = ModelState.FAILED, str(exc)
            await model.pool.stop()
            log.error("model %s (%s) version %s failed to load: %s", model.spec.name,
                      model.spec.path, model.spec.version, exc,
                      extra={"fields": {"model": model.spec.name, "file": str(model.spec.path)}})
            return
        model.info, model.state = info, ModelState.READY
        model.batcher.start()
        log.info("model %s loaded%s; layout %s", model.spec.name,
                 f"; decode fast: {info.drift.describe()}" if info.drift else "",
                 model.layout.describe(),
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


def _alone(version: str) -> VersionPolicy:
    """The policy of a model serving one version."""
    return VersionPolicy(served=(version,), default=version)


def _kept(policy: VersionPolicy | None, new: ServedModel,
          others: Mapping[str, ServedModel]) -> VersionPolicy:
    """The policy once ``new`` replaced the highest version: the one its files give, else the
    old one while it still names exactly the served versions, else ``new`` as the default."""
    served = {*others, new.spec.version}
    for candidate in (new.spec.policy, policy):
        if candidate is not None and set(candidate.served) == served:
            return candidate
    return VersionPolicy(served=tuple(sorted(served, key=int)), default=new.spec.version)


def _health(model: ServedModel) -> dict[str, Any]:
    return {"state": model.state, "workers_ready": model.workers_ready,
            **({"progress": model.progress.describe()} if model.progress else {}),
            **({"error": model.error} if model.error else {}),
            **({"update_error": model.update_error} if model.update_error else {})}


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
        "layout": {**model.pool.layout, **model.batcher.layout},
        "layout_source": model.layout.sources,
        "providers": [p["provider"] for p in model.providers],
        "provider_note": info.provider_note, "precision": model.spec.config.precision,
    }
