"""The shared vocabulary: what a model is, how its input is prepared, what a prediction holds.

These are plain frozen dataclasses so that they cross process boundaries cheaply and are
compared by value in tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

# The vocabulary tables: each concept's words are listed here once; settings, modelhost.toml
# validation and CLI help derive their choices from these (``get_args``), never a copy.
Format = Literal["onnx", "keras", "tf_savedmodel", "tf_frozen", "torchscript", "torch_export",
                 "python"]
Layout = Literal["NCHW", "NHWC"]
Scaling = Literal["none", "unit", "tf", "caffe", "torch", "inception128", "meanstd"]
Resample = Literal["nearest", "box", "bilinear", "hamming", "bicubic", "lanczos"]  # Pillow's
TfMethod = Literal["bilinear", "nearest", "bicubic", "area", "lanczos3", "lanczos5", "gaussian",
                   "mitchellcubic"]  # tf.image.resize's methods
OutputKind = Literal["auto", "logits", "probabilities"]
ResizeMode = Literal["stretch", "shorter", "pad"]
RuntimeMode = Literal["auto", "native", "onnx"]
Pipeline = Literal["torchvision", "keras", "keras-dataset", "tf", "pillow"]
Decode = Literal["exact", "fast"]
Precision = Literal["fp32", "int8"]
LogFormat = Literal["auto", "json", "text"]

FORMATS: tuple[Format, ...] = get_args(Format)
LAYOUTS: tuple[Layout, ...] = get_args(Layout)
SCALINGS: tuple[Scaling, ...] = get_args(Scaling)
RESAMPLES: tuple[Resample, ...] = get_args(Resample)
TF_METHODS: tuple[TfMethod, ...] = get_args(TfMethod)
OUTPUT_KINDS: tuple[OutputKind, ...] = get_args(OutputKind)
PIPELINES: tuple[Pipeline, ...] = get_args(Pipeline)
DECODES: tuple[Decode, ...] = get_args(Decode)
PRECISIONS: tuple[Precision, ...] = get_args(Precision)


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output as the runtime reports it; -1 marks a variable dimension."""

    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the model's input tensor.

    ``size`` is (width, height) of the network input; ``pipeline`` names the training
    pipeline reproduced exactly (``inputs/pipelines.py``; ``""`` is modelhost's own default);
    ``resize`` is the size of the shorter side before a centre crop (0: stretch straight to
    ``size``); ``resample`` is the interpolation in the pipeline's own vocabulary;
    ``antialias`` and ``central_crop`` belong to ``tf``, ``aspect_crop`` to ``keras``
    (``keep_aspect_ratio``) and ``keras-dataset`` (``crop_to_aspect_ratio``). ``decode``
    ``fast`` trades exactness for speed (JPEG draft decoding, one-call box resize).
    ``scaling`` names a preset; ``mean``/``std`` are used with ``meanstd`` (in the 0–255
    range of the channel order).
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
    resample: Resample | TfMethod = "bilinear"
    default_crop: float = 0.0
    pipeline: Pipeline | Literal[""] = ""
    decode: Decode = "exact"
    antialias: bool = False
    central_crop: float = 1.0
    aspect_crop: bool = False


@dataclass(frozen=True)
class Region:
    """Where to look: a point in the upright image's pixels and a crop fraction (None: the
    model's default when a point is given, else the whole image)."""

    x: float | None = None
    y: float | None = None
    crop: float | None = None


@dataclass(frozen=True)
class ProviderSpec:
    """One ONNX Runtime execution provider asked for: a short name (cpu, openvino, cuda,
    tensorrt) and its options as ONNX Runtime takes them (strings), e.g. device_type=CPU."""

    name: str
    options: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        return ":".join([self.name, *(f"{k}={v}" for k, v in self.options)])


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
    resample: Resample | TfMethod | None = None  # None: the pipeline's own default
    default_crop: float = 0.0
    pipeline: Pipeline | None = None
    decode: Decode = "exact"
    antialias: bool = False
    central_crop: float = 1.0
    aspect_crop: bool = False
    top_k: int = 5
    max_batch_size: int = 8
    max_delay_ms: float = 0.0
    replicas: int = 1
    threads: int = 0
    output_kind: OutputKind = "auto"
    providers: tuple[ProviderSpec, ...] = ()  # [runtime]: tried in order; () is the CPU
    tolerance: float = 1e-3  # largest |Δp| a non-CPU provider may differ from the CPU by
    precision: Precision = "fp32"  # int8: the verified `modelhost optimize` file
    replicas_per_gpu: int = 1
    gpu_memory_mb: int = 0  # device memory cap per worker (0: the provider's default)
    # the layout values ([workers] replicas/threads, [batching] max_batch_size) the file sets,
    # in that order: those are never tuned (tuning.py); a tuple, so its repr is stable
    pinned: tuple[str, ...] = ()


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
class VersionPolicy:
    """A model folder's ``[versions]`` section: which numbered versions serve, their labels,
    and how requests that name no version are shared among them (``routing.py`` applies it).

    ``served`` is already resolved against the folder (``"latest:2"`` → the two highest);
    ``split`` maps version → weight (summing to 100; empty = everything to ``default``);
    ``sticky`` keeps one client (API key name, else address) on one version; ``shadow`` also
    runs every defaulted request on that version without returning its answer.
    """

    served: tuple[str, ...]
    default: str
    labels: tuple[tuple[str, str], ...] = ()
    split: tuple[tuple[str, int], ...] = ()
    sticky: bool = False
    shadow: str | None = None


@dataclass(frozen=True)
class CheckedFile:
    """An ONNX file as the server found it when it checked it (supply/specs.py), so that each
    worker can skip parsing it again: importing the ``onnx`` package and parsing the graph cost
    every worker 8–10 MB (benchmarks/memory.py). A worker re-checks a file whose size or
    modification time changed since."""

    size: int
    mtime_ns: int
    ops: tuple[str, ...]  # op types with counts, for ``inspect`` and /api/models/{model}
    parameters: int


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
    policy: VersionPolicy | None = None  # [versions] of modelhost.toml; None: the highest serves
    others: tuple[ModelSpec, ...] = ()  # the other served versions (policy), each its own spec
    checked: CheckedFile | None = None  # an ONNX file's check, done once by the server


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
    drift: Drift | None = None  # measured at start when decode = "fast"
    provider: str = ""  # the execution provider in use (cpu, openvino, cuda…); "" if not ONNX
    provider_note: str = ""  # how it was chosen: verification figures, or why CPU serves
    whole_image: bool = False  # predict_image gets the upright RGB image itself, any size


@dataclass(frozen=True)
class Drift:
    """How far ``decode = "fast"`` moves a model's answers from the exact pipeline, measured
    by the worker at start on ``images`` images (the model's samples/ or generated photos)."""

    max_score_diff: float
    top1_agreement: float
    images: int
    source: str

    def describe(self) -> str:
        return (f"max |Δscore| {self.max_score_diff:.2g}, top-1 agreement "
                f"{self.top1_agreement:.0%} on {self.images} {self.source} images")


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

    def as_dict(self) -> dict[str, Any]:
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
