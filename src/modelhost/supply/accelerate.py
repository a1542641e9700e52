"""``--providers`` and ``--precision`` applied to a model about to be served: only ONNX Runtime
can honour them, and INT8 only with the file ``modelhost optimize --int8`` verified for these
FP32 bytes (runtimes/quantize.py)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..runtimes import providers
from ..runtimes.quantize import int8_spec
from ..settings import ConfigError, Settings
from ..types import ModelSpec


def accelerated(source: ModelSpec, served: ModelSpec, settings: Settings) -> ModelSpec:
    """``served`` with ``--providers``/``--precision`` applied, and its INT8 file when
    precision is int8 (verified for these FP32 bytes, recorded beside ``source``)."""
    changes: dict[str, Any] = {"precision": settings.precision} if settings.precision else {}
    if settings.providers:
        try:
            changes["providers"] = providers.parse(settings.providers)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    spec = replace(served, config=replace(served.config, **changes)) if changes else served
    asked = _acceleration(spec)
    if asked and spec.format != "onnx":
        raise ConfigError(f"{spec.name}: {asked} needs an ONNX model; this one runs on "
                          f"{spec.runtime_note or spec.format + ' runtime'} (convert it: "
                          "--runtime auto or onnx)")
    if spec.config.precision != "int8":
        return spec
    return int8_spec(spec, source.path.parent)  # or PrecisionError (a StartupError)


def _acceleration(spec: ModelSpec) -> str:
    """What of ``spec``'s configuration only ONNX Runtime can do ('' when nothing)."""
    parts = []
    if any(p.name != "cpu" for p in spec.config.providers):
        parts.append("providers " + ",".join(str(p) for p in spec.config.providers))
    if spec.config.precision == "int8":
        parts.append("precision int8")
    return " with ".join(parts)
