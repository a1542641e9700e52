"""The Runtime protocol and the choice of runtime for a model format.

A runtime loads one model file and runs batches on it. It lives only in worker processes (and in
``modelhost predict``/``inspect`` on a local file), never in the HTTP process.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ..types import ModelInfo, ModelSpec


class RuntimeUnavailable(Exception):
    """The model's format needs a runtime that is not installed or not supported yet."""


class Runtime(Protocol):
    """What a worker needs from a loaded model."""

    info: ModelInfo

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch (first axis) and return the first output, batch-first."""
        ...


_EXTRAS = {
    "keras": "tensorflow",
    "tf_savedmodel": "tensorflow",
    "tf_frozen": "tensorflow",
    "torchscript": "torch",
    "torch_export": "torch",
    "python": "all",
}


def load_runtime(spec: ModelSpec, threads: int) -> Runtime:
    """Load ``spec`` with the runtime its format needs."""
    if spec.format == "onnx":
        from .onnx import OnnxRuntime

        return OnnxRuntime(spec.path, threads=threads)
    extra = _EXTRAS.get(spec.format)
    if extra is None:
        raise RuntimeUnavailable(f"{spec.path.name}: unknown model format {spec.format!r}")
    raise RuntimeUnavailable(
        f"{spec.path.name}: the {spec.format} runtime is not available in this build; "
        f'install it with: pip install "modelhost[{extra}]" (or convert the model to ONNX)'
    )
