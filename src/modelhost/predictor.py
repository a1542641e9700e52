"""The one request path: every protocol's rows go through :meth:`Predictor._run`.

    admit (not draining) → deadline → [native: read the source]
    → _run: served version (named, labelled, or chosen by the model's routing)
      → header check (format, pixel cap, crop point) → poison quarantine
      → the model's batcher → worker (decode, preprocess, runtime) → NaN/Inf check
      → probabilities + top-k → metrics, the per-prediction log line, the prediction record
      → [routed, and the model has a shadow version: the same rows on it, in the background,
         recorded as its shadow, never returned; dropped first when queues are half full]

Native predict, multi-model predict, V2 REST, V2 gRPC and TF Serving all call it, so they all
quarantine, refuse NaN, log and record alike, and every prediction has an id its client gets
back for feedback. It knows no HTTP: adapters hand it rows and a deadline and get
:class:`Prediction` objects or a :class:`ModelhostError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace

import numpy as np

from .batching.batcher import BatchOutput
from .errors import InternalError, ModelhostError, NotFound, Timeout, Unavailable
from .feedback.recorder import PredictionLog
from .inputs.images import check
from .inputs.sources import Source, SourceReader
from .metrics import Metrics
from .postprocess import probabilities, top_k
from .registry import Registry, ServedModel
from .types import Prediction, Region, Timings
from .workers.messages import RawTensor

log = logging.getLogger("modelhost.predictor")
predictions_log = logging.getLogger("modelhost.predictions")

Row = tuple[bytes, Region | RawTensor]


@dataclass(frozen=True)
class PredictRequest:
    """What a native client asked for, already parsed and validated by the HTTP layer."""

    source: Source
    region: Region = field(default_factory=Region)
    top_k: int | None = None
    client: str | None = None  # the API key's name, for the prediction log
    bench: bool = False  # load-test traffic (X-Modelhost-Bench): stored marked as such
    version: str | None = None  # the version the path names (/versions/{v}), if any
    label: str | None = None  # the version label the path names (/labels/{label}), if any
    peer: str | None = None  # the client's address: sticky routing without an API key


@dataclass(frozen=True)
class Call:
    """Who is asking and until when, and which version: the same for every row of one
    request."""

    deadline: float
    request_id: str
    client: str | None = None
    top_k: int | None = None
    bench: bool = False  # load-test traffic (X-Modelhost-Bench): stored marked as such
    version: str | None = None  # named by the request; None: the model's routing chooses
    label: str | None = None
    peer: str | None = None  # the client's address
    routed: bool = False  # the version was the routing's choice (not named): shadowed

    @property
    def routing_key(self) -> str | None:
        """Who the client is for sticky routing: its API key's name, else its address."""
        return self.client or self.peer

    def on(self, model: ServedModel) -> Call:
        """This call pinned to ``model``'s version: the rows run where the adapter looked."""
        return replace(self, version=model.spec.version, label=None,
                       routed=self.routed or (self.version is None and self.label is None))


@dataclass(frozen=True)
class Inference:
    """A tensor-protocol request's result: the model's output rows and their predictions."""

    outputs: np.ndarray  # (rows, outputs) float32, as the worker returned them
    predictions: list[Prediction]

    @property
    def ids(self) -> str:
        """The prediction ids, comma-separated in row order (one per row)."""
        return ",".join(p.id for p in self.predictions)


class Predictor:
    """Runs predictions on the registry's models; the one place a prediction happens."""

    def __init__(self, registry: Registry, sources: SourceReader, metrics: Metrics, *,
                 max_pixels: int, prediction_log: PredictionLog | None = None) -> None:
        self._registry = registry
        self._sources = sources
        self._metrics = metrics
        self._max_pixels = max_pixels
        self.prediction_log = prediction_log
        self._shadows: set[asyncio.Task[None]] = set()

    async def aclose(self) -> None:
        for task in list(self._shadows):
            task.cancel()
        await self._sources.aclose()

    # -- the entry points, one per request shape -------------------------------------------

    async def predict(self, name: str, request: PredictRequest, deadline: float,
                      request_id: str) -> Prediction:
        """One image named by a native request through one model."""
        call = Call(deadline, request_id, request.client, request.top_k, request.bench,
                    request.version, request.label, request.peer)
        with self._admitted():
            call = call.on(self._served(name, call))  # 404/503 before the source is read
            started = time.perf_counter()
            async with _deadline(deadline):
                data, fetch_ms = await self._fetch(request.source)
                found = await self._run(name, [(data, request.region)], call, started,
                                        fetch_ms)
        return found.predictions[0]

    async def predict_many(self, names: list[str], request: PredictRequest, deadline: float,
                           request_id: str) -> dict[str, Prediction | ModelhostError]:
        """One image through several models in parallel; each fails on its own."""
        call = Call(deadline, request_id, request.client, request.top_k, request.bench,
                    peer=request.peer)
        with self._admitted():
            started = time.perf_counter()
            async with _deadline(deadline):
                data, fetch_ms = await self._fetch(request.source)
            results = await asyncio.gather(
                *(self._run_in_time(n, [(data, request.region)], call, started, fetch_ms)
                  for n in names),
                return_exceptions=True,
            )
        return {n: _as_outcome(r) for n, r in zip(names, results, strict=True)}

    async def infer(self, model: ServedModel, rows: list[Row], call: Call) -> Inference:
        """Rows of one tensor-protocol request (V2, TF Serving, gRPC) through the served
        version the adapter looked up (with :meth:`served`, to read its input) and made the
        rows for: each row joins the batcher on its own, so these requests batch with every
        other; a failing row fails the request (the protocols have no per-row errors)."""
        with self._admitted():
            return await self._run_in_time(model.spec.name, rows, call.on(model),
                                           time.perf_counter(), 0.0)

    def served(self, name: str, call: Call) -> ServedModel:
        """The served version a call goes to (the one lookup every protocol makes)."""
        return self._served(name, call)

    # -- the run step ----------------------------------------------------------------------

    async def _run_in_time(self, name: str, rows: list[Row], call: Call, started: float,
                           fetch_ms: float) -> Inference:
        async with _deadline(call.deadline):
            return await self._run(name, rows, call, started, fetch_ms)

    async def _run(self, name: str, rows: list[Row], call: Call, started: float,
                   fetch_ms: float) -> Inference:
        """The one run step: check every row, batch them, check and record every result."""
        model = self._served(name, call)  # again: --watch may have swapped it meanwhile
        try:
            for data, region in rows:  # every row is checked before any row queues
                if isinstance(region, Region):
                    check(data, region, model.spec.config.default_crop, self._max_pixels)
                model.batcher.refuse_poison(data)
            outs = await _submit(model, rows, call.deadline)
            for out in outs:
                if not np.isfinite(out.row).all():
                    self._metrics.invalid_outputs.labels(name).inc()
                    raise InternalError("the model returned NaN or infinite scores for this "
                                        "input", "model_failed")
        except ModelhostError as exc:
            self._log_failure(model, exc, started, call.request_id)
            raise
        predictions = [self._finish(model, row, out, call, started, fetch_ms)
                       for row, out in zip(rows, outs, strict=True)]
        if call.routed or (call.version is None and call.label is None):
            self._shadow(model, rows, call, predictions)
        return Inference(np.stack([out.row for out in outs]), predictions)

    # -- the shadow version ----------------------------------------------------------------

    def _shadow(self, answering: ServedModel, rows: list[Row], call: Call,
                answered: list[Prediction]) -> None:
        """Run the rows on the model's shadow version too, in the background (never awaited
        by the request: its answer is already made)."""
        try:
            version = self._registry.policy(answering.spec.name).shadow
        except NotFound:  # removed meanwhile (V2 unload): nothing to shadow
            return
        if version is None or version == answering.spec.version:
            return
        task = asyncio.create_task(self._run_shadow(answering, version, rows, call, answered))
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)

    async def _run_shadow(self, answering: ServedModel, version: str, rows: list[Row],
                          call: Call, answered: list[Prediction]) -> None:
        """The shadow run: dropped (and counted) when either version's queue is half full,
        so that answered traffic keeps its places; recorded with ``shadow_of``."""
        name = answering.spec.name
        try:
            shadow = self._registry.served(name, version)
            if shadow.batcher.half_full or answering.batcher.half_full:
                raise Unavailable("queues half full: shadow run dropped", "overloaded")
            started = time.perf_counter()
            async with _deadline(call.deadline):
                outs = await _submit(shadow, rows, call.deadline)
        except ModelhostError:
            self._metrics.shadow_dropped.labels(name).inc()
            return
        except Exception:  # never lost silently, never a request's failure
            log.exception("shadow run of %s version %s failed", name, version)
            self._metrics.shadow_dropped.labels(name).inc()
            return
        for row, out, prediction in zip(rows, outs, answered, strict=True):
            if np.isfinite(out.row).all():
                self._finish(shadow, row, out, call, started, 0.0, shadow_of=prediction.id)

    def _finish(self, model: ServedModel, row: Row, out: BatchOutput, call: Call,
                started: float, fetch_ms: float, shadow_of: str | None = None) -> Prediction:
        """One row's prediction: labels, timings, metrics, log line and record (a shadow's:
        the record only, marked with the answered prediction's id)."""
        config = model.spec.config
        labels = top_k(probabilities(out.row, config.output_kind), model.spec.labels,
                       call.top_k or config.top_k)
        timings = Timings(fetch=fetch_ms, decode=out.decode_ms, queue=out.queue_ms,
                          inference=out.inference_ms,
                          total=(time.perf_counter() - started) * 1000)
        prediction = Prediction(uuid.uuid4().hex, model.spec.name, model.spec.version, labels,
                                timings, out.batch_size)
        if shadow_of is None:
            self._observe(prediction, call.request_id)
        if self.prediction_log is not None:
            data, region = row
            self.prediction_log.record(
                prediction, data=data, sha256=out.sha256,
                region=region if isinstance(region, Region) else Region(),
                client=call.client, request_id=call.request_id, bench=call.bench,
                shadow_of=shadow_of)
        return prediction

    # -- helpers ---------------------------------------------------------------------------

    def _served(self, name: str, call: Call) -> ServedModel:
        return self._registry.served(name, call.version, label=call.label,
                                     client=call.routing_key)

    async def _fetch(self, source: Source) -> tuple[bytes, float]:
        started = time.perf_counter()
        data = await self._sources.read(source)
        return data, (time.perf_counter() - started) * 1000

    @contextlib.contextmanager
    def _admitted(self) -> Iterator[None]:
        lifecycle = self._registry.lifecycle
        if lifecycle.draining:
            raise Unavailable("the server is shutting down", "draining", retry_after=2.0)
        lifecycle.inflight += 1
        try:
            yield
        finally:
            lifecycle.inflight -= 1

    def _observe(self, p: Prediction, request_id: str) -> None:
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

    @staticmethod
    def _log_failure(model: ServedModel, exc: ModelhostError, started: float,
                     request_id: str) -> None:
        predictions_log.info("prediction failed", extra={"fields": {
            "request_id": request_id, "model": model.spec.name, "version": model.spec.version,
            "status": exc.status, "code": exc.code,
            "durations_ms": {"total": round((time.perf_counter() - started) * 1000, 3)},
        }})


async def _submit(model: ServedModel, rows: list[Row], deadline: float) -> list[BatchOutput]:
    """Queue every row on the model's batcher; the first failure fails them all."""
    if len(rows) == 1:  # the common case needs no task per row
        return [await model.batcher.submit(*rows[0], deadline)]
    outs = await asyncio.gather(*(model.batcher.submit(data, region, deadline)
                                  for data, region in rows), return_exceptions=True)
    for out in outs:
        if isinstance(out, BaseException):
            raise out
    return outs  # type: ignore[return-value]


@contextlib.asynccontextmanager
async def _deadline(deadline: float) -> AsyncIterator[None]:
    """Turn running out of time into a 504, whatever stage was running."""
    try:
        async with asyncio.timeout_at(deadline):
            yield
    except TimeoutError:
        raise Timeout("the request did not finish before its deadline") from None


def _as_outcome(result: object) -> Prediction | ModelhostError:
    if isinstance(result, ModelhostError):
        return result
    if isinstance(result, Inference):
        return result.predictions[0]
    log.error("unexpected error in a fan-out prediction", exc_info=result)  # type: ignore[arg-type]
    return ModelhostError("the prediction failed")
