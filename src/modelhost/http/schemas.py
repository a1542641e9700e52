"""The native API's response bodies as pydantic models, for the OpenAPI document only.

Routes build their bodies from the predictor's dataclasses (orjson, no validation on the hot
path); these models describe those bodies, and tests check live responses against them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class Score(BaseModel):
    label: str
    index: int
    score: float


class TimingsMs(BaseModel):
    fetch: float
    decode: float
    queue: float
    inference: float
    total: float


class PredictionBody(BaseModel):
    id: str
    model: str
    version: str
    predictions: list[Score]
    timings_ms: TimingsMs


class ErrorDetail(BaseModel):
    code: str
    message: str
    request_id: str | None = None


class Error(BaseModel):
    error: ErrorDetail


class ManyResults(BaseModel):
    results: dict[str, PredictionBody | Error]
    request_id: str


class DecodeDrift(BaseModel):
    """Measured at start when ``decode = "fast"``: the largest probability difference from the
    exact pipeline and the share of images with the same top-1, on ``images`` images."""

    max_score_diff: float
    top1_agreement: float
    images: int
    source: str


class InputDescription(BaseModel):
    """What the model is given; ``whole_image``: a ``predict_image`` class gets the upright RGB
    image at its own size (no width, height, layout, scaling or resize)."""

    width: int | None = None
    height: int | None = None
    channels: int
    layout: str | None = None
    scaling: str | None = None
    resize: int | None = None
    pipeline: str | None = None
    resample: str | None = None
    decode: str | None = None
    drift: DecodeDrift | None = None
    whole_image: bool = False


class Tensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class WorkerProvider(BaseModel):
    pid: int | None
    provider: str  # cpu, openvino, cuda, tensorrt ("" for a framework's own runtime)
    note: str  # how it was chosen: the verification figures, or why the CPU serves


class ServedVersion(BaseModel):
    """One served version of a model: its own workers and state."""

    version: str
    state: str
    error: str | None
    workers_ready: int
    workers_rss_mb: float | None  # its worker processes' resident memory (Linux)


class Routing(BaseModel):
    """How requests that name no version are shared among the served versions."""

    default: str
    labels: dict[str, str]
    split: dict[str, int]
    sticky: bool
    shadow: str | None


class Progress(BaseModel):
    """A slow start-up stage while it runs (state ``converting``)."""

    stage: str  # e.g. "converting keras to ONNX"
    seconds: float  # since it started
    timeout: float  # when it gives up


class ModelSummary(BaseModel):
    name: str
    version: str
    versions: list[str]
    state: str  # converting, loading, ready, failed, removed
    progress: Progress | None
    error: str | None
    format: str
    labels: int
    top_k: int
    default_crop: float
    input: InputDescription | None
    workers_ready: int
    layout: dict[str, float]  # replicas, threads, max_batch_size, max_delay_ms in force
    # where each of replicas, threads, max_batch_size came from: measured (tuned at this
    # start), cache (tuned before), modelhost.toml, command line or default
    layout_source: dict[str, str]
    tuning_seconds: float  # spent measuring the layout at this start (0: none)
    precision: str
    providers: list[WorkerProvider]
    served_versions: list[ServedVersion]
    routing: Routing


class ModelDetail(ModelSummary):
    label_names: list[str]
    inputs: list[Tensor] | None = None
    outputs: list[Tensor] | None = None
    parameters: int | None = None


class ModelList(BaseModel):
    models: list[ModelSummary]


class Liveness(BaseModel):
    status: str


class Readiness(BaseModel):
    ready: bool
    reason: str | None
    models: dict[str, dict]


def documented(model: type[BaseModel], *statuses: int) -> dict:
    """Route arguments that document ``model`` as the body of 200 (and ``statuses``) without
    FastAPI validating or filtering what the route returns."""
    return {"response_model": None,
            "responses": {status: {"model": model} for status in (200, *statuses)}}


# FastAPI's ``responses=``: extra OpenAPI responses by status
Responses = dict[int | str, dict[str, Any]]

ERRORS: Responses = {status: {"model": Error}
                     for status in (400, 404, 413, 415, 422, 429, 503, 504)}
