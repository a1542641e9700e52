"""Keras 3 models saved with ``model.save`` (``.keras``, legacy ``.h5``).

Loaded with ``safe_mode=True``. A model holding Python code (a ``Lambda`` layer) is refused
before loading, with the reason, unless ``--trust-model-code`` was given: Keras' own refusal
differs between the ``.keras`` and ``.h5`` paths, so the saved configuration is read first
(before TensorFlow is imported, so a damaged file also fails at once, in one line).
Batches run through one ``tf.function`` with a variable batch axis (``model.predict`` adds tens
of milliseconds per call; DESIGN.md, 'Measured here').
"""

from __future__ import annotations

import json
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np

from ..types import ModelInfo, ModelSpec, TensorSpec
from . import tensorflow as tf_runtime
from .base import ArrayRuntime, ModelFileError, UntrustedCode

CODE_LAYERS = ("Lambda", "TFOpLambda")
SCALING_LAYERS = ("Rescaling", "Normalization")


def saved_config(path: Path) -> dict:
    """The model's saved architecture (JSON) without loading it (nor TensorFlow): a damaged or
    foreign file fails here with one line."""
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                return json.loads(archive.read("config.json"))
        except (KeyError, ValueError, zipfile.BadZipFile, OSError) as exc:
            raise ModelFileError(f"{path.name}: not a Keras model archive (no readable "
                                 f"config.json: {type(exc).__name__})") from None
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            raw = handle.attrs.get("model_config")
    except OSError:
        raise ModelFileError(f"{path.name}: not a Keras model (neither a .keras archive nor an "
                             "HDF5 file; damaged, truncated or another kind of file)") from None
    if raw is None:
        raise ValueError(f"{path.name} holds weights only; save the whole model (model.save)")
    return json.loads(raw.decode() if isinstance(raw, bytes) else raw)


def layer_classes(config: dict) -> list[str]:
    """Every layer class name in a saved configuration, nested models included."""
    found = []
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "class_name" in node and isinstance(node.get("config"), dict):
                found.append(node["class_name"])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def check_code(path: Path, trust: bool) -> None:
    """Refuse a model with code layers unless trusted."""
    code = sorted({c for c in layer_classes(saved_config(path)) if c in CODE_LAYERS})
    if code and not trust:
        raise UntrustedCode(
            f"{path.name} contains a {code[0]} layer, which runs Python code stored in the file; "
            "load it only if you trust its author, with --trust-model-code"
        )


def load_model(spec: ModelSpec):
    """The Keras model in ``spec`` (code layers already refused by :func:`check_code`)."""
    import keras

    return keras.saving.load_model(
        spec.path, compile=False, safe_mode=not spec.options.trust_code
    )


class KerasRuntime(ArrayRuntime):
    """A Keras model called through one traced function."""

    def __init__(self, spec: ModelSpec, threads: int = 0) -> None:
        check_code(spec.path, spec.options.trust_code)  # before TensorFlow takes seconds to load
        tf = tf_runtime.configured(threads)
        self.model = load_model(spec)
        inputs = self.model.inputs
        signature = [tf.TensorSpec((None, *inputs[0].shape[1:]), inputs[0].dtype)]
        model = self.model
        self._call = tf.function(lambda x: model(x, training=False), input_signature=signature,
                                 reduce_retracing=True)
        classes = [layer.__class__.__name__ for layer in _layers(self.model)]
        self.info = ModelInfo(
            inputs=tuple(_tensor(t) for t in inputs),
            outputs=tuple(_tensor(t) for t in self.model.outputs),
            ops=tuple(f"{name}×{n}" for name, n in Counter(classes).items()),
            parameters=int(self.model.count_params()),
            producer="keras",
            scaling="none" if any(c in SCALING_LAYERS for c in classes) else None,
        )

    def predict(self, batch: np.ndarray) -> np.ndarray:
        output = self._call(batch)
        if isinstance(output, list | tuple):
            output = output[0]
        elif isinstance(output, dict):
            output = next(iter(output.values()))
        return np.asarray(output)


def _layers(model) -> list:
    """All layers, descending into nested models (keras.applications inside a Sequential)."""
    found = []
    for layer in model.layers:
        found.append(layer)
        if hasattr(layer, "layers"):
            found.extend(_layers(layer))
    return found


def _tensor(t) -> TensorSpec:
    shape = tuple(-1 if d is None else int(d) for d in t.shape)
    return TensorSpec(getattr(t, "name", "") or "input", str(t.dtype), shape)
