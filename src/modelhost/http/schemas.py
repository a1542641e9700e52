"""The native API's response bodies as pydantic models, for the OpenAPI document only.

Routes build their bodies from the predictor's dataclasses (orjson, no validation on the hot
path); these models describe those bodies, and tests check live responses against them.
"""

from __future__ import annotations

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


class InputDescription(BaseModel):
    """What the model is given; ``whole_image``: a ``predict_image`` class gets the upright RGB
    image at its own size (no width, height, layout, scaling or resize)."""

    width: int | None = None
    height: int | None = None
    channels: int
    layout: str | None = None
    scaling: str | None = None
    resize: int | None = None
    whole_image: bool = False


class Tensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelSummary(BaseModel):
    name: str
    version: str
    versions: list[str]
    state: str
    error: str | None
    format: str
    labels: int
    top_k: int
    default_crop: float
    input: InputDescription | None
    workers_ready: int


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


ERRORS = {status: {"model": Error} for status in (400, 404, 413, 415, 422, 429, 503, 504)}
