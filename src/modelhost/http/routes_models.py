"""Model listing and metadata under /api/models."""

from __future__ import annotations

from fastapi import APIRouter

from ..registry import RegistryView, ServedModel
from ..routing import as_json
from ..types import Drift
from .schemas import ERRORS, ModelDetail, ModelList, documented


def describe(model: ServedModel, labels: bool = False) -> dict:
    """The public description of a model version (no server paths)."""
    prep, info = model.prep, model.info
    body: dict = {
        "name": model.spec.name,
        "version": model.spec.version,
        "versions": list(model.spec.versions),
        "state": model.state,
        "progress": model.progress.describe() if model.progress else None,
        "error": model.error,
        "update_error": model.update_error,
        "format": model.spec.source_format or model.spec.format,
        "runtime": model.spec.runtime_note or f"{model.spec.format} runtime",
        "labels": len(model.spec.labels),
        "top_k": model.spec.config.top_k,
        "default_crop": prep.default_crop if prep else model.spec.config.default_crop,
        "input": _input(model),
        "workers_ready": model.workers_ready,
        "layout": {**model.pool.layout, **model.batcher.layout},
        "layout_source": model.layout.sources,
        "tuning_seconds": round(model.layout.seconds, 2),
        "precision": model.spec.config.precision,
        "providers": model.providers,
    }
    if labels:
        body["label_names"] = list(model.spec.labels)
        if info is not None:
            body["inputs"] = [_tensor(t) for t in info.inputs]
            body["outputs"] = [_tensor(t) for t in info.outputs]
            body["parameters"] = info.parameters
    return body


def describe_model(registry: RegistryView, name: str, labels: bool = False) -> dict:
    """A model: its highest served version described, each served version's own state and
    workers (``served_versions``), and how requests without a version are routed."""
    body = describe(registry.model(name), labels)
    body["served_versions"] = [
        {"version": v, "state": m.state, "error": m.error, "workers_ready": m.workers_ready,
         "workers_rss_mb": m.pool.resident_mb()}
        for v, m in registry.versions(name).items()]
    body["routing"] = as_json(registry.policy(name))
    return body


def _input(model: ServedModel) -> dict | None:
    """The input the model is given; a ``predict_image`` class gets the whole image."""
    prep, info = model.prep, model.info
    if prep is None:
        return None
    if info is not None and info.whole_image:
        return {"whole_image": True, "channels": 3}
    return {"width": prep.size[0], "height": prep.size[1], "channels": prep.channels,
            "layout": prep.layout, "scaling": prep.scaling, "resize": prep.resize,
            "pipeline": prep.pipeline or "default", "resample": prep.resample,
            "decode": prep.decode, "drift": _drift(info.drift if info else None)}


def _drift(drift: Drift | None) -> dict | None:
    """How far ``decode = "fast"`` moved the answers at start (None when decoding exactly)."""
    if drift is None:
        return None
    return {"max_score_diff": drift.max_score_diff, "top1_agreement": drift.top1_agreement,
            "images": drift.images, "source": drift.source}


def _tensor(t) -> dict:
    return {"name": t.name, "datatype": t.dtype, "shape": list(t.shape)}


def router(registry: RegistryView) -> APIRouter:
    api = APIRouter(prefix="/api", tags=["models"], responses=ERRORS)

    @api.get("/models", summary="List the served models", **documented(ModelList))
    async def list_models() -> dict:
        return {"models": [describe_model(registry, name) for name in registry.models]}

    @api.get("/models/{model}", summary="One model's metadata, labels and preprocessing",
             **documented(ModelDetail))
    async def get_model(model: str) -> dict:
        return describe_model(registry, model, labels=True)

    return api
