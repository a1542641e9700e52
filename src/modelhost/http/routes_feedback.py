"""Feedback and what is learned from it: POST a user's label for a prediction, read accuracy
and latency per model (the dashboard and `modelhost report` show the same numbers)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field, model_validator

from ..errors import InvalidInput, NotFound, Unavailable
from ..feedback import compare, report
from ..feedback.labels import check_known, clean_label
from ..feedback.recorder import PredictionLog
from ..feedback.schema import LABEL_MAX
from ..feedback.store import StoreUnavailable
from ..registry import RegistryView
from .parse import client_of
from .responses import JSON


class FeedbackIn(BaseModel):
    """What the user says about a prediction: the label they chose, or only whether the
    top-1 was right."""

    label: str | None = Field(None, max_length=LABEL_MAX * 2,
                              description="The label the user chose.")
    correct: bool | None = Field(None, description="Whether the top-1 label was right.")

    @model_validator(mode="after")
    def one_of(self) -> FeedbackIn:
        if self.label is None and self.correct is None:
            raise ValueError("give `label` or `correct`")
        return self


class FeedbackOut(BaseModel):
    prediction_id: str
    model: str
    label: str | None
    correct: bool
    stored: bool = Field(description="True: in the database (200). False: kept durably in the "
                                     "journal until the database is back (202).")


Since = Annotated[datetime | None, Query(description="ISO time; from this moment on.")]
Until = Annotated[datetime | None, Query(description="ISO time; before this moment.")]
Version = Annotated[str | None, Query(description="Only this model version.")]
IncludeBench = Annotated[bool, Query(description="Also count load-test traffic (requests "
                                                 "marked X-Modelhost-Bench: 1, as `modelhost "
                                                 "bench` sends).")]


def router(registry: RegistryView, prediction_log: PredictionLog | None, *,
           allow_new_labels: bool) -> APIRouter:
    api = APIRouter(prefix="/api", tags=["feedback"])

    def the_log() -> PredictionLog:
        if prediction_log is None:
            raise NotFound("predictions are not logged on this server (--no-log-predictions)")
        return prediction_log

    @api.post("/predictions/{prediction_id}/feedback", response_model=FeedbackOut,
              responses={202: {"model": FeedbackOut}},
              summary="Tell which label was right for a prediction")
    async def feedback(prediction_id: str, body: FeedbackIn, request: Request) -> JSON:
        log = the_log()
        logged = await log.lookup(prediction_id)
        label = clean_label(body.label) if body.label is not None else None
        if label is not None and not allow_new_labels:
            check_known(label, _labels_of(registry, logged.model), logged.model)
        correct = label == logged.top1 if label is not None else bool(body.correct)
        if label is None and correct:
            label = logged.top1
        if body.correct is not None and body.correct != correct:
            raise InvalidInput("`correct` contradicts `label` (the top-1 was "
                               f"{logged.top1!r})")
        stored = await log.feedback(prediction_id, label, correct, client_of(request))
        out = FeedbackOut(prediction_id=prediction_id, model=logged.model, label=label,
                          correct=correct, stored=stored)
        return JSON(out.model_dump(), status_code=200 if stored else 202)

    @api.get("/models/{model}/accuracy", summary="Accuracy learned from users' feedback")
    async def accuracy(model: str, since: Since = None, until: Until = None,
                       version: Version = None, include_bench: IncludeBench = False) -> JSON:
        store = _store_for(registry, the_log(), model)
        window = (_utc(since), _utc(until), version, include_bench)
        count, judged = await _read(
            lambda: (store.count_predictions(model, *window), store.judged(model, *window)))
        return JSON({"model": model, "version": version, "since": _iso(since),
                     "until": _iso(until), **report.accuracy(judged, count)})

    @api.get("/models/{model}/versions/compare",
             summary="Two versions' accuracy on real feedback, side by side, with a "
                     "two-proportion test and a verdict")
    async def compare_versions(model: str, a: Annotated[str, Query(description="A version.")],
                               b: Annotated[str, Query(description="Another version.")],
                               since: Since = None, until: Until = None) -> JSON:
        store = _store_for(registry, the_log(), model)
        if a == b:
            raise InvalidInput("compare two different versions: ?a=1&b=2")
        window = (_utc(since), _utc(until))
        return JSON({"model": model, "since": _iso(since), "until": _iso(until),
                     **await _read(lambda: compare.from_store(store, model, a, b, *window))})

    @api.get("/models/{model}/latency", summary="Latency percentiles and throughput over time",
             description="The last 24 hours unless `since` or `until` is given; at most 48 "
                         "buckets, computed in the database.")
    async def latency(model: str, since: Since = None, until: Until = None,
                      version: Version = None) -> JSON:
        store = _store_for(registry, the_log(), model)
        if since is None and until is None:
            since = datetime.now(UTC) - LATENCY_WINDOW
        window = (_utc(since), _utc(until), version)
        figures = await _read(lambda: _latency(store, model, window))
        return JSON({"model": model, "version": version, "since": _iso(since),
                     "until": _iso(until), **figures})

    return api


LATENCY_WINDOW = timedelta(hours=24)  # the default window: bounded, whatever the log holds


def _latency(store, model: str, window: tuple) -> dict:
    """Two queries: the window's time span, then the rows around each percentile."""
    span = store.time_span(model, *window)
    if span is None:
        return report.latency(None, None, [])
    seconds, edges = report.latency_buckets(*span)
    ranks = store.latency_ranks(model, *window, edges, report.QUANTILES)
    return report.latency(span[0], seconds, ranks)


def _labels_of(registry: RegistryView, name: str) -> frozenset[str]:
    """The labels a user may choose for ``name``: its labels.txt, or class indices."""
    model = registry.models.get(name)
    if model is None:
        return frozenset()
    if model.spec.labels:
        return frozenset(model.spec.labels)
    outputs = model.info.outputs if model.info else ()
    classes = outputs[0].shape[-1] if outputs and outputs[0].shape else 0
    return frozenset(str(i) for i in range(max(classes, 0)))


def _store_for(registry: RegistryView, log: PredictionLog, model: str):
    registry.model(model)  # 404 for a model this server does not serve
    return log.store


async def _read(query):
    try:
        return await asyncio.to_thread(query)
    except StoreUnavailable:
        raise Unavailable("the prediction log database is unavailable", "db_unavailable",
                          retry_after=5.0) from None


def _utc(at: datetime | None) -> datetime | None:
    if at is None:
        return None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _iso(at: datetime | None) -> str | None:
    utc = _utc(at)
    return utc.isoformat() if utc else None
