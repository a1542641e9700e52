"""The Runtime protocol and the choice of runtime for a model format.

A runtime loads one model file and runs batches on it. It lives only in worker processes (and in
``modelhost predict``/``inspect`` on a local file, and the conversion subprocess), never in the
HTTP process. Each framework is imported only inside its runtime's module, so a missing framework
is reported as the extra to install rather than an ImportError at start-up.
"""

from __future__ import annotations

import importlib
from typing import Protocol

import numpy as np
from PIL import Image

from ..errors import StartupError
from ..types import Format, ModelInfo, ModelSpec


class RuntimeUnavailable(StartupError):
    """The model's format needs a runtime that is not installed or not supported yet."""


class UntrustedCode(StartupError):
    """The model holds Python code (a Lambda layer, a pipeline.py) and loading it was not
    allowed with ``--trust-model-code``."""


class ModelFileError(StartupError):
    """The model file is damaged, is not what its name says, or reaches outside its folder; the
    message names the file and the reason in one line."""


class Runtime(Protocol):
    """Everything a worker calls on a loaded model.

    A runtime takes preprocessed arrays (``predict``), or, when ``takes_images`` is true, the
    decoded images themselves (``predict_images``: a ``pipeline.py`` that does its own
    preprocessing); the worker reads ``takes_images`` once and calls one of the two.
    """

    info: ModelInfo
    takes_images: bool

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch (first axis) and return the first output, batch-first."""
        ...

    def predict_images(self, images: list[Image.Image]) -> np.ndarray:
        """Run one batch of decoded images; only called when ``takes_images``."""
        ...


class ArrayRuntime:
    """The base of the runtimes fed preprocessed arrays (every framework runtime)."""

    takes_images = False

    def predict_images(self, images: list[Image.Image]) -> np.ndarray:
        raise TypeError(f"{type(self).__name__} takes preprocessed arrays, not images")


# format → (module, class, the extra that installs its framework); one entry per FORMATS word
_RUNTIMES: dict[Format, tuple[str, str, str]] = {
    "onnx": ("onnx", "OnnxRuntime", ""),
    "keras": ("keras", "KerasRuntime", "tensorflow"),
    "tf_savedmodel": ("tensorflow", "SavedModelRuntime", "tensorflow"),
    "tf_frozen": ("tensorflow", "FrozenGraphRuntime", "tensorflow"),
    "torchscript": ("torch", "TorchScriptRuntime", "torch"),
    "torch_export": ("torch", "TorchExportRuntime", "torch"),
    "python": ("python", "PipelineRuntime", ""),
}
_FRAMEWORKS = {"tensorflow", "keras", "torch", "tf2onnx", "h5py"}


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message, cut at ``limit`` ('' when it has none):
    frameworks raise multi-page messages, and a log line or an error body needs one line."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else ""


def load_runtime(spec: ModelSpec, threads: int) -> Runtime:
    """Load ``spec`` with the runtime its format needs."""
    if spec.format not in _RUNTIMES:
        raise RuntimeUnavailable(f"{spec.path.name}: unknown model format {spec.format!r}")
    module_name, class_name, extra = _RUNTIMES[spec.format]
    try:
        module = importlib.import_module(f"{__package__}.{module_name}")
        return getattr(module, class_name)(spec, threads)
    except ImportError as exc:
        if (exc.name or "").split(".")[0] not in _FRAMEWORKS:
            raise
        raise RuntimeUnavailable(
            f"{spec.path.name}: the {spec.format} runtime needs {exc.name}, which is not "
            f'installed; install it with: pip install "modelhost[{extra or "all"}]"'
        ) from None
