"""What to serve: the model file or folder given, a model URL (downloaded first) or the demos,
read into ModelSpecs with the server's runtime options, and each prepared (converted, then
accelerated) as the server will serve it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..repository import load_repository
from ..settings import Settings
from ..types import ModelSpec, RuntimeOptions
from .accelerate import accelerated
from .convert import prepare
from .demo import demo_specs
from .download import fetch_model


def model_specs(settings: Settings) -> list[ModelSpec]:
    """The models to serve: the given file or folder, or the demo models."""
    root = model_root(settings)
    if root is None:
        return [accelerated(s, s, settings) for s in demo_specs(settings.cache_dir)]
    return [prepared(s, settings) for s in scan(root, settings)]


def model_root(settings: Settings) -> Path | None:
    """The model file or folder to serve (a model URL downloaded first); None for the demos."""
    if settings.model_url is not None:
        return fetch_model(settings.model_url, settings.sha256, settings.cache_dir)
    return settings.models


def scan(root: Path, settings: Settings) -> list[ModelSpec]:
    options = RuntimeOptions(settings.runtime, settings.trust_model_code, settings.input_name,
                             settings.output_name)
    return [replace(s, options=options) for s in load_repository(root, settings.format,
                                                                   settings.pipeline)]


def prepared(spec: ModelSpec, settings: Settings) -> ModelSpec:
    return accelerated(spec, prepare(spec, settings.cache_dir, settings.convert_timeout),
                        settings)
