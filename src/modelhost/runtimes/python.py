"""A user's own model class in ``pipeline.py`` (or ``model.py``), like the tutorials' wrapper.

The file defines one class with ``__init__(self, model_dir)`` and either
``predict(self, batch: np.ndarray) -> np.ndarray`` (a batch of preprocessed images, like any
model) or ``predict_image(self, image: PIL.Image.Image) -> dict[label, score]`` (the image
itself; the class does its own preprocessing). An optional ``input_shape`` attribute (height,
width, channels) describes ``predict``'s input (224×224×3, NHWC, float32 otherwise;
``modelhost.toml`` may adjust it). The class runs in the worker processes, with batching,
crash isolation and restarts like any model. Its code runs only with ``--trust-model-code``.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys

import numpy as np

from ..types import ModelInfo, ModelSpec, TensorSpec
from .base import UntrustedCode


class PipelineRuntime:
    """The user's class, instantiated once per worker."""

    def __init__(self, spec: ModelSpec, threads: int = 0) -> None:
        if not spec.options.trust_code:
            raise UntrustedCode(
                f"{spec.path.name} is Python code; modelhost runs it only if you trust it, "
                "with --trust-model-code"
            )
        cls = _pipeline_class(spec)
        self.pipeline = cls(str(spec.path.parent))
        self.labels = spec.labels
        self.takes_images = not hasattr(self.pipeline, "predict")
        if self.takes_images and not self.labels:
            raise ValueError(f"{cls.__name__}.predict_image returns scores by label; "
                             "put the labels in labels.txt beside the model")
        self._known = frozenset(self.labels)  # checked against every image's answer
        height, width, channels = getattr(self.pipeline, "input_shape", (224, 224, 3))[-3:]
        self.info = ModelInfo(
            inputs=(TensorSpec("image", "float32", (-1, height, width, channels)),),
            outputs=(TensorSpec("scores", "float32", (-1, len(self.labels) or -1)),),
            producer=f"{spec.path.name}:{cls.__name__}",
            whole_image=self.takes_images,
        )

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.pipeline.predict(batch))

    def predict_images(self, images: list) -> np.ndarray:
        """One row of scores in label order per PIL image."""
        rows = []
        for image in images:
            scores = self.pipeline.predict_image(image)
            unknown = scores.keys() - self._known
            if unknown:
                raise ValueError(f"predict_image returned labels not in labels.txt: "
                                 f"{sorted(unknown)[:5]}")
            rows.append([float(scores.get(label, 0.0)) for label in self.labels])
        return np.asarray(rows, dtype=np.float32)


def _pipeline_class(spec: ModelSpec) -> type:
    """The one class defined in the file that has predict or predict_image."""
    module_name = f"modelhost_pipeline_{spec.name}"
    loader = importlib.util.spec_from_file_location(module_name, spec.path)
    if loader is None or loader.loader is None:
        raise ValueError(f"{spec.path.name}: cannot be imported")
    module = importlib.util.module_from_spec(loader)
    sys.modules[module_name] = module
    loader.loader.exec_module(module)
    classes = [c for _, c in inspect.getmembers(module, inspect.isclass)
               if c.__module__ == module_name
               and (hasattr(c, "predict") or hasattr(c, "predict_image"))]
    if len(classes) != 1:
        raise ValueError(f"{spec.path.name}: expected one class with predict(batch) or "
                         f"predict_image(image), found {[c.__name__ for c in classes]}")
    return classes[0]
