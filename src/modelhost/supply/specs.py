"""What to serve: the model file or folder given, a model URL (downloaded first) or the demos,
read into ModelSpecs with the server's runtime options (:func:`sources`, quick: the server
reads them before its port opens), and each prepared — converted, then accelerated — as the
server will serve it (:func:`prepared`, slow: the registry runs it in the models' start, after
the port has opened, and ``modelhost prepare`` ahead of time)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..repository import load_repository
from ..runtimes.base import ModelFileError
from ..runtimes.onnx import check_file
from ..settings import Settings
from ..types import ModelSpec, RuntimeOptions
from .accelerate import accelerated
from .convert import prepare
from .demo import UNCONVERTED, converted, demo_specs
from .download import fetch_model

if TYPE_CHECKING:
    from ..registry import Progress


def model_specs(settings: Settings) -> list[ModelSpec]:
    """The models to serve, prepared: what ``modelhost prepare`` converts ahead of time (every
    served version of each)."""
    return [replace(prepared(s, settings), others=tuple(prepared(o, settings) for o in s.others))
            for s in sources(settings)]


def sources(settings: Settings) -> list[ModelSpec]:
    """The models to serve as given, not yet prepared: the file or folder, or the demos."""
    root = model_root(settings)
    return demo_specs(settings.cache_dir) if root is None else scan(root, settings)


def model_root(settings: Settings) -> Path | None:
    """The model file or folder to serve (a model URL downloaded first); None for the demos."""
    if settings.model_url is not None:
        return fetch_model(settings.model_url, settings.sha256, settings.cache_dir)
    return settings.models


def scan(root: Path, settings: Settings) -> list[ModelSpec]:
    options = RuntimeOptions(settings.runtime, settings.trust_model_code, settings.input_name,
                             settings.output_name)
    return [replace(s, options=options, others=tuple(replace(o, options=options)
                                                     for o in s.others))
            for s in load_repository(root, settings.format, settings.pipeline)]


def prepared(spec: ModelSpec, settings: Settings,
             progress: Callable[[Progress], None] | None = None) -> ModelSpec:
    """``spec`` as it will be served: converted when its format needs it (``progress`` hears
    when a conversion starts), then with its providers and precision, and its ONNX file
    checked once for all its workers."""
    if spec.format == UNCONVERTED:  # the imagenet demo's first start
        spec = converted(spec, settings.convert_timeout, progress)
        if spec.problem:
            return spec
    return checked(accelerated(spec, prepare(spec, settings.cache_dir, settings.convert_timeout,
                                             progress), settings))


def checked(spec: ModelSpec) -> ModelSpec:
    """An ONNX ``spec`` with its file's check (runtimes/onnx.py), or with the reason it fails
    as its ``problem``: the model then fails to load with that one line, as it did when each
    worker checked the file."""
    if spec.format != "onnx" or spec.problem:
        return spec
    try:
        return replace(spec, checked=check_file(spec.path))
    except ModelFileError as exc:
        return replace(spec, problem=str(exc))
    except OSError as exc:  # gone or unreadable since the folder was read
        return replace(spec, problem=f"{spec.path.name}: cannot be read ({exc.strerror})")
