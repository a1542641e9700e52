"""PredictionService: the request path, top to bottom, and the models it serves.

    read the source → decode + preprocess (bounded thread pool) → batcher → worker
    → softmax/top-k → record (metrics, log line) → Prediction

It knows no HTTP: routes hand it a :class:`PredictRequest` and a deadline, and get a
:class:`Prediction` or a :class:`ModelhostError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field

import numpy as np

from .batching.batcher import Batcher
from .errors import InternalError, ModelhostError, NotFound, Timeout, Unavailable
from .feedback.recorder import PredictionLog
from .inputs.images import check
from .inputs.sources import Source, SourceReader
from .metrics import Metrics
from .postprocess import probabilities, top_k
from .preprocessing import PreprocessingError, resolve
from .types import ModelInfo, ModelSpec, Prediction, Preprocessing, Region, Timings
from .workers.messages import RawTensor
from .workers.pool import LoadError, ModelPool

log = logging.getLogger("modelhost.service")
predictions_log = logging.getLogger("modelhost.predictions")


@dataclass(frozen=True)
class PredictRequest:
    """What a client asked for, already parsed and validated by the HTTP layer."""

    source: Source
    region: Region = field(default_factory=Region)
    top_k: int | None = None
    client: str | None = None  # the API key's name, for the prediction log
    bench: bool = False  # load-test traffic (X-Modelhost-Bench): logged, marked


@dataclass
class ServedModel:
    """One model as served: its workers, its batcher, and what loading taught us."""

    spec: ModelSpec
    pool: ModelPool
    batcher: Batcher
    state: str = "loading"  # loading | ready | failed | removed
    error: str | None = None
    update_error: str | None = None  # a newer version that failed to load (--watch)
    info: ModelInfo | None = None
    prep: Preprocessing | None = None


@dataclass
class Lifecycle:
    """Start-up and shutdown state that health checks and the drain read."""

    draining: bool = False
    inflight: int = 0
    fatal: str | None = None
    loaded: asyncio.Event = field(default_factory=asyncio.Event)


class PredictionService:
    """Runs predictions on the served models and reports on their health."""

    def __init__(self, models: list[ServedModel], sources: SourceReader, metrics: Metrics, *,
                 max_pixels: int, keep_going: bool,
                 prediction_log: PredictionLog | None = None) -> None:
        self.models = {m.spec.name: m for m in models}
        self.lifecycle = Lifecycle()
        self.prediction_log = prediction_log
        self._sources = sources
        self._metrics = metrics
        self._max_pixels = max_pixels
        self._keep_going = keep_going

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Load every model in its workers; a failure is fatal unless ``keep_going``."""
        await asyncio.gather(*(self._load(m) for m in self.models.values()))
        failed = [m for m in self.models.values() if m.state == "failed"]
        if failed and not self._keep_going:
            self.lifecycle.fatal = "; ".join(f"{m.spec.name}: {m.error}" for m in failed)
        self.lifecycle.loaded.set()

    async def _load(self, model: ServedModel) -> None:
        try:
            info = await model.pool.start()
            model.prep = resolve(model.spec.config, info)
            _check_labels(model.spec, info)
        except (LoadError, PreprocessingError) as exc:
            model.state, model.error = "failed", str(exc)
            await model.pool.stop()
            log.error("model %s (%s) failed to load: %s", model.spec.name, model.spec.path, exc,
                      extra={"fields": {"model": model.spec.name, "file": str(model.spec.path)}})
            return
        model.info, model.state = info, "ready"
        model.batcher.start()
        log.info("model %s loaded", model.spec.name, extra={"fields": _summary(model)})

    # -- live repository (--watch) ---------------------------------------------------------

    async def swap(self, new: ServedModel, grace: float) -> bool:
        """Load and warm ``new`` beside the model of that name, then switch traffic to it in
        one step and drain the old one. If ``new`` fails, the old one keeps serving and the
        failure is reported on /readyz and /api/models."""
        await self._load(new)
        old = self.models.get(new.spec.name)
        if new.state != "ready" and old is not None and old.state == "ready":
            old.update_error = f"version {new.spec.version} failed to load: {new.error}"
            return False
        self.models[new.spec.name] = new  # requests look their model up again at submit time
        if old is not None:
            await self._retire(old, grace)
        return new.state == "ready"

    async def remove(self, name: str, grace: float) -> None:
        """Stop serving ``name``: new requests get 404, queued ones finish first."""
        old = self.models.pop(name, None)
        if old is not None:
            old.state = "removed"
            await self._retire(old, grace)

    async def _retire(self, old: ServedModel, grace: float) -> None:
        until = time.monotonic() + grace
        while (old.batcher.depth or old.pool.inflight) and time.monotonic() < until:
            await asyncio.sleep(0.02)
        await old.batcher.stop()
        await old.pool.stop()
        log.info("model %s version %s stopped", old.spec.name, old.spec.version)

    async def drain(self, grace: float) -> None:
        """Refuse new predictions and wait (at most ``grace`` s) for in-flight ones."""
        self.lifecycle.draining = True
        until = time.monotonic() + grace
        while self.lifecycle.inflight and time.monotonic() < until:
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        for model in self.models.values():
            await model.batcher.stop()
        await asyncio.gather(*(m.pool.stop() for m in self.models.values()))
        await self._sources.aclose()

    def readiness(self) -> tuple[bool, dict]:
        """Ready only when not draining and every model has a live, warmed-up worker."""
        models = {
            name: {"state": m.state, "workers_ready": m.pool.ready_workers,
                   **({"error": m.error} if m.error else {}),
                   **({"update_error": m.update_error} if m.update_error else {})}
            for name, m in self.models.items()
        }
        ready = (
            not self.lifecycle.draining
            and self.lifecycle.loaded.is_set()
            and all(m.state == "ready" and m.pool.ready_workers > 0 for m in self.models.values())
        )
        reason = "draining" if self.lifecycle.draining else None
        details = {"ready": ready, "reason": reason, "models": models}
        if self.prediction_log is not None:  # reported, but predictions never wait for it
            details["prediction_log"] = self.prediction_log.state()
        return ready, details

    def state_rows(self) -> list[dict]:
        """Per-model numbers for the metrics collector."""
        return [
            {"model": n, "queue_depth": m.batcher.depth, "workers_ready": m.pool.ready_workers,
             "load_seconds": m.pool.load_seconds, "restarts": m.pool.restarts}
            for n, m in self.models.items()
        ]

    # -- the request path ------------------------------------------------------------------

    async def predict(self, name: str, request: PredictRequest, deadline: float,
                      request_id: str) -> Prediction:
        """One image through one model."""
        with self._admitted():
            model = self.model(name)
            self._check_ready(model)
            timings = Timings()
            started = time.perf_counter()
            async with _deadline(deadline):
                data = await self._fetch(request.source, timings)
                return await self._run(model, data, request, deadline, timings, started,
                                       request_id)

    async def predict_many(self, names: list[str], request: PredictRequest, deadline: float,
                           request_id: str) -> dict[str, Prediction | ModelhostError]:
        """One image through several models in parallel; each fails on its own."""
        with self._admitted():
            timings = Timings()
            started = time.perf_counter()
            async with _deadline(deadline):
                data = await self._fetch(request.source, timings)
            results = await asyncio.gather(
                *(self._run_named(n, data, request, deadline, started, timings.fetch,
                                  request_id) for n in names),
                return_exceptions=True,
            )
        return {n: _as_outcome(r) for n, r in zip(names, results, strict=True)}

    async def infer(self, name: str, rows: list[tuple[bytes, Region | RawTensor]],
                    deadline: float, request_id: str) -> np.ndarray:
        """Rows of one tensor-protocol request (V2, TF Serving) through one model: each row
        joins the batcher on its own, so these requests batch with every other; a failing row
        fails the request (the protocols have no per-row errors). Output rows, flat float32."""
        with self._admitted():
            model = self.model(name)
            self._check_ready(model)
            started = time.perf_counter()
            try:
                async with _deadline(deadline):
                    outs = await self._submit_rows(model, rows, deadline)
            except ModelhostError as exc:
                self._log_failure(name, model.spec.version, exc, started, request_id)
                raise
        self._metrics.total.labels(name).observe(time.perf_counter() - started)
        for out in outs:
            self._metrics.batch_size.labels(name).observe(out.batch_size)
        return np.stack([out.row for out in outs])

    async def _submit_rows(self, model: ServedModel, rows: list[tuple[bytes, Region | RawTensor]],
                           deadline: float) -> list:
        """Check every image's header before any row queues, then queue them all."""
        for data, region in rows:
            if isinstance(region, Region):
                check(data, region, model.spec.config.default_crop, self._max_pixels)
        if len(rows) == 1:  # the common case needs no task per row
            return [await model.batcher.submit(*rows[0], deadline)]
        outs = await asyncio.gather(*(model.batcher.submit(data, region, deadline)
                                      for data, region in rows), return_exceptions=True)
        for out in outs:
            if isinstance(out, BaseException):
                raise out
        return outs

    def model(self, name: str) -> ServedModel:
        model = self.models.get(name)
        if model is None:
            raise NotFound(f"no model named {name!r}")
        return model

    async def _run_named(self, name, data, request, deadline, started, fetch_ms, request_id):
        model = self.model(name)
        self._check_ready(model)
        async with _deadline(deadline):
            return await self._run(model, data, request, deadline, Timings(fetch=fetch_ms),
                                   started, request_id)

    async def _fetch(self, source: Source, timings: Timings) -> bytes:
        started = time.perf_counter()
        data = await self._sources.read(source)
        timings.fetch = (time.perf_counter() - started) * 1000
        return data

    async def _run(self, model: ServedModel, data: bytes, request: PredictRequest,
                   deadline: float, timings: Timings, started: float,
                   request_id: str) -> Prediction:
        name = model.spec.name
        model = self.models.get(name, model)  # swapped by --watch while the image was fetched
        self._check_ready(model)
        try:
            check(data, request.region, model.spec.config.default_crop, self._max_pixels)
            model.pool.refuse_poison(data)
            out = await model.batcher.submit(data, request.region, deadline)
            if not np.isfinite(out.row).all():
                self._metrics.invalid_outputs.labels(name).inc()
                raise InternalError("the model returned NaN or infinite scores for this input",
                                    "model_failed")
            probs = probabilities(out.row, model.spec.config.output_kind)
            k = request.top_k or model.spec.config.top_k
            labels = top_k(probs, model.spec.labels, k)
        except ModelhostError as exc:
            self._log_failure(name, model.spec.version, exc, started, request_id)
            raise
        timings.queue, timings.decode, timings.inference = (
            out.queue_ms, out.decode_ms, out.inference_ms)
        timings.total = (time.perf_counter() - started) * 1000
        prediction = Prediction(uuid.uuid4().hex, name, model.spec.version, labels, timings,
                                out.batch_size)
        self._record(prediction, request_id)
        if self.prediction_log is not None:
            self.prediction_log.record(prediction, data=data, sha256=out.sha256,
                                       region=request.region, client=request.client,
                                       request_id=request_id, bench=request.bench)
        return prediction

    @contextlib.contextmanager
    def _admitted(self):
        if self.lifecycle.draining:
            raise Unavailable("the server is shutting down", "draining", retry_after=2.0)
        self.lifecycle.inflight += 1
        try:
            yield
        finally:
            self.lifecycle.inflight -= 1

    @staticmethod
    def _check_ready(model: ServedModel) -> None:
        if model.state == "removed":
            raise NotFound(f"no model named {model.spec.name!r}")
        if model.state == "failed":
            raise Unavailable(f"model {model.spec.name!r} failed to load", "not_ready",
                              retry_after=30.0)
        if model.state != "ready":
            raise Unavailable(f"model {model.spec.name!r} is still loading", "not_ready")

    def _record(self, p: Prediction, request_id: str) -> None:
        m, t = self._metrics, p.timings
        m.decode.labels(p.model).observe(t.decode / 1000)
        m.queue.labels(p.model).observe(t.queue / 1000)
        m.inference.labels(p.model).observe(t.inference / 1000)
        m.total.labels(p.model).observe(t.total / 1000)
        m.batch_size.labels(p.model).observe(p.batch_size)
        predictions_log.info("prediction", extra={"fields": {
            "request_id": request_id, "prediction_id": p.id, "model": p.model,
            "version": p.version, "status": 200, "batch_size": p.batch_size,
            "top1": p.labels[0].label if p.labels else None,
            "durations_ms": t.as_dict(),
        }})

    def _log_failure(self, model: str, version: str, exc: ModelhostError, started: float,
                     request_id: str) -> None:
        predictions_log.info("prediction failed", extra={"fields": {
            "request_id": request_id, "model": model, "version": version,
            "status": exc.status, "code": exc.code,
            "durations_ms": {"total": round((time.perf_counter() - started) * 1000, 3)},
        }})


@contextlib.asynccontextmanager
async def _deadline(deadline: float):
    """Turn running out of time into a 504, whatever stage was running."""
    try:
        async with asyncio.timeout_at(deadline):
            yield
    except TimeoutError:
        raise Timeout("the request did not finish before its deadline") from None


def _as_outcome(result) -> Prediction | ModelhostError:
    if isinstance(result, Prediction | ModelhostError):
        return result
    if isinstance(result, BaseException):
        log.error("unexpected error in a fan-out prediction", exc_info=result)
        return ModelhostError("the prediction failed")
    return result


def _check_labels(spec: ModelSpec, info: ModelInfo) -> None:
    classes = info.outputs[0].shape[-1] if info.outputs and info.outputs[0].shape else -1
    if spec.labels and classes > 0 and classes != len(spec.labels):
        raise LoadError(
            f"labels.txt: {len(spec.labels)} labels, "
            f"but the model has {classes} outputs"
        )


def _summary(model: ServedModel) -> dict:
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
            "resize": prep.resize},
        "workers": model.pool.ready_workers,
    }

