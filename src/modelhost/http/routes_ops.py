"""Health, readiness and metrics for probes and Prometheus."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from ..feedback.recorder import PredictionLog
from ..metrics import Metrics
from ..registry import RegistryView
from .responses import JSON
from .schemas import Liveness, Readiness, documented


def router(registry: RegistryView, metrics: Metrics,
           prediction_log: PredictionLog | None) -> APIRouter:
    api = APIRouter(tags=["ops"])

    @api.get("/healthz", summary="Liveness: the process answers", **documented(Liveness))
    async def healthz() -> dict:
        return {"status": "ok"}

    @api.get("/readyz", summary="Readiness: every model loaded and warm, not draining",
             **documented(Readiness, 503))
    async def readyz() -> JSON:
        status, details, headers = readiness(registry, prediction_log)
        return JSON(details, status_code=status, headers=headers)

    @api.get("/metrics", summary="Prometheus metrics", response_class=Response,
             responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}}})
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return api


def readiness(registry: RegistryView, prediction_log: PredictionLog | None
              ) -> tuple[int, dict, dict[str, str]]:
    """/readyz's status, body and headers (also the ops port's, http/ops_port.py)."""
    ready, details = registry.readiness()
    if prediction_log is not None:  # reported, but predictions never wait for it
        details["prediction_log"] = prediction_log.state()
    return (200, details, {}) if ready else (503, details, {"Retry-After": "1"})
