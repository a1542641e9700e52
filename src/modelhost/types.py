"""The shared vocabulary: what a model is, how its input is prepared, what a prediction holds.

These are plain frozen dataclasses so that they cross process boundaries cheaply and are
compared by value in tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

# The vocabulary tables: each concept's words are listed here once; settings, modelhost.toml
# validation and CLI help derive their choices from these (``get_args``), never a copy.
Format = Literal["onnx", "keras", "tf_savedmodel", "tf_frozen", "torchscript", "torch_export",
                 "python"]
Layout = Literal["NCHW", "NHWC"]
Scaling = Literal["none", "unit", "tf", "caffe", "torch", "inception128", "meanstd"]
Resample = Literal["nearest", "box", "bilinear", "bicubic", "lanczos"]
OutputKind = Literal["auto", "logits", "probabilities"]
ResizeMode = Literal["stretch", "shorter", "pad"]
RuntimeMode = Literal["auto", "native", "onnx"]
LogFormat = Literal["auto", "json", "text"]

FORMATS: tuple[Format, ...] = get_args(Format)
LAYOUTS: tuple[Layout, ...] = get_args(Layout)
SCALINGS: tuple[Scaling, ...] = get_args(Scaling)
RESAMPLES: tuple[Resample, ...] = get_args(Resample)
OUTPUT_KINDS: tuple[OutputKind, ...] = get_args(OutputKind)


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output as the runtime reports it; -1 marks a variable dimension."""

    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the model's input tensor.

    ``size`` is (width, height) of the network input; ``resize`` is the size of the shorter
    side before a centre crop (0: stretch straight to ``size``). ``scaling`` names a preset;
    ``mean``/``std`` are used with ``meanstd`` (in the 0–255 range of the channel order).
    """

    size: tuple[int, int] = (224, 224)
    channels: int = 3
    layout: Layout = "NCHW"
    dtype: str = "float32"
    scaling: Scaling = "unit"
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    bgr: bool = False
    resize: int = 0
    resample: Resample = "bilinear"
    default_crop: float = 0.0


@dataclass(frozen=True)
class Region:
    """Where to look: a point in the upright image's pixels and a crop fraction (None: the
    model's default when a point is given, else the whole image)."""

    x: float | None = None
    y: float | None = None
    crop: float | None = None


@dataclass(frozen=True)
class ModelConfig:
    """What ``modelhost.toml`` may say about a model; every field is optional there."""

    size: tuple[int, int] | None = None
    layout: Layout | None = None
    scaling: Scaling | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    bgr: bool = False
    resize: int = 0
    resample: Resample = "bilinear"
    default_crop: float = 0.0
    top_k: int = 5
    max_batch_size: int = 8
    max_delay_ms: float = 0.0
    replicas: int = 1
    threads: int = 0
    output_kind: OutputKind = "auto"


@dataclass(frozen=True)
class RuntimeOptions:
    """How a model is to be run, from the command line (``serve --runtime`` and friends).

    ``runtime``: ``auto`` converts Keras/TF/torch models to ONNX when the conversion is
    verified, ``native`` never converts, ``onnx`` requires the conversion. ``trust_code`` allows
    loading Python code shipped with a model (Lambda layers, ``pipeline.py``). ``input_name`` and
    ``output_name`` pick tensors of a frozen TensorFlow graph.
    """

    runtime: RuntimeMode = "auto"
    trust_code: bool = False
    input_name: str | None = None
    output_name: str | None = None


@dataclass(frozen=True)
class ModelSpec:
    """One servable model: where its file is, its labels and its configuration.

    After conversion to ONNX, ``path``/``format`` name the converted file and ``source_format``
    the original one; ``runtime_note`` says which runtime serves it and why (shown on
    ``/api/models/{model}``). ``problem`` makes the model fail to load, like a broken file
    does: one model's bad labels.txt stops the server, or, with ``--keep-going``, only that
    model, reported on ``/readyz``.
    """

    name: str
    version: str
    path: Path
    format: str
    labels: tuple[str, ...]
    config: ModelConfig = field(default_factory=ModelConfig)
    versions: tuple[str, ...] = ()
    options: RuntimeOptions = field(default_factory=RuntimeOptions)
    source_format: str = ""
    runtime_note: str = ""
    problem: str = ""  # found while reading the folder (bad labels.txt): loading fails with it


@dataclass(frozen=True)
class ModelInfo:
    """What a worker learned by loading the model (sent back in its Ready message)."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    ops: tuple[str, ...] = ()
    parameters: int = 0
    producer: str = ""
    scaling: Scaling | None = None  # "none" when the model scales its own input (Rescaling)
    graph: tuple[tuple[str, str, str], ...] = ()  # every op (name, type, shape): frozen graphs
    whole_image: bool = False  # predict_image gets the upright RGB image itself, any size


@dataclass(frozen=True)
class Label:
    """One ranked answer."""

    label: str
    index: int
    score: float


@dataclass
class Timings:
    """Milliseconds spent in each stage of one request."""

    fetch: float = 0.0
    decode: float = 0.0
    queue: float = 0.0
    inference: float = 0.0
    total: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in self.__dict__.items()}


@dataclass
class Prediction:
    """A finished prediction for one model on one image."""

    id: str
    model: str
    version: str
    labels: list[Label]
    timings: Timings
    batch_size: int = 1

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "model": self.model,
            "version": self.version,
            "predictions": [
                {"label": p.label, "index": p.index, "score": round(p.score, 6)}
                for p in self.labels
            ],
            "timings_ms": self.timings.as_dict(),
        }
