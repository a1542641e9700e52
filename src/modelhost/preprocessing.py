"""Decide how images become a model's input tensor, from the model itself plus modelhost.toml.

The model file says the input's rank, layout, size and dtype; ``modelhost.toml`` adds only what
a file cannot say (scaling preset, colour order, resize policy). Both the HTTP process and the
workers (for warm-up) call :func:`resolve`, so it depends on nothing but the shared types.
"""

from __future__ import annotations

from .errors import StartupError
from .types import ModelConfig, ModelInfo, Preprocessing

DEFAULT_SIZE = 224
_IMAGE_DTYPES = ("float32", "float16", "float64", "uint8")


class PreprocessingError(StartupError):
    """The model's input cannot be fed from an image; the message says why."""


def resolve(config: ModelConfig, info: ModelInfo) -> Preprocessing:
    """Combine what the model's first input says with the model's configuration."""
    if not info.inputs:
        raise PreprocessingError("the model has no inputs")
    tensor = info.inputs[0]
    shape = tensor.shape
    if len(shape) != 4:
        raise PreprocessingError(
            f"input {tensor.name!r} has shape {list(shape)}; an image model needs 4 dimensions "
            "(batch, channels, height, width) or (batch, height, width, channels)"
        )
    layout = config.layout or _detect_layout(shape)
    channels, height, width = (
        (shape[1], shape[2], shape[3]) if layout == "NCHW" else (shape[3], shape[1], shape[2])
    )
    if channels not in (1, 3, -1):
        raise PreprocessingError(f"input {tensor.name!r} has {channels} channels; expected 1 or 3")
    size = config.size or (
        width if width > 0 else DEFAULT_SIZE, height if height > 0 else DEFAULT_SIZE
    )
    dtype = tensor.dtype if tensor.dtype in _IMAGE_DTYPES else "float32"
    # modelhost.toml first; then what the model says of itself (a Keras model with its own
    # Rescaling/Normalization layer takes 0–255 pixels); then 0–1 floats.
    scaling = config.scaling or info.scaling or ("none" if dtype == "uint8" else "unit")
    return Preprocessing(
        size=size,
        channels=3 if channels == -1 else channels,
        layout=layout,
        dtype=dtype,
        scaling=scaling,
        mean=config.mean or (0.0, 0.0, 0.0),
        std=config.std or (1.0, 1.0, 1.0),
        bgr=config.bgr,
        resize=config.resize,
        resample=config.resample,
        default_crop=config.default_crop,
    )


def _detect_layout(shape: tuple[int, ...]) -> str:
    """Channels-first when dim 1 looks like a channel count, channels-last when dim 3 does."""
    if shape[1] in (1, 3):
        return "NCHW"
    if shape[3] in (1, 3):
        return "NHWC"
    return "NCHW"


def tensor_shape(prep: Preprocessing, batch: int = 1) -> tuple[int, int, int, int]:
    """The input tensor's shape for ``batch`` images."""
    width, height = prep.size
    if prep.layout == "NCHW":
        return (batch, prep.channels, height, width)
    return (batch, height, width, prep.channels)
