"""Named training pipelines, reproduced exactly: what a well-known library feeds a model.

A model answers best on the pixels it was trained on, so each pipeline repeats its library's own
steps on the upright, fully decoded image (cropped around the request's point, if any):

- ``torchvision``: ``Resize(resize, interpolation)`` (shorter side, torchvision's rounding) then
  ``CenterCrop(size)`` (torchvision's offsets, zero padding when the crop is larger), or
  ``Resize((h, w))`` without ``resize``; on a PIL image, as ``ImageFolder`` loads it.
- ``keras``: ``keras.utils.load_img(target_size, interpolation, keep_aspect_ratio)`` +
  ``img_to_array``; its default interpolation is ``nearest``.
- ``pillow``: ``Image.resize(size, resample)`` of the whole image (Pillow's default: bicubic).
- ``keras-dataset``: what ``image_dataset_from_directory`` fed ``model.fit``: TensorFlow's
  decoder, ``tf.image.resize`` (bilinear by default), optionally ``crop_to_aspect_ratio``.
- ``tf``: TensorFlow's decoder, optional ``tf.image.central_crop(fraction)``, then
  ``tf.image.resize(method, antialias)``.

The Pillow pipelines are bit for bit equal to their libraries (tests/inputs compares with
torchvision and Keras themselves). The TensorFlow pipelines run TensorFlow's own ops, so they
need TensorFlow in the worker: NumPy re-implementations of its JPEG decoder (which differs from
Pillow's by up to 18 levels at quality 95: TensorFlow decodes with libjpeg's fast integer DCT)
and of its resize kernels could not be exact.

The library conversions are kept too: ``convert("RGB")`` drops an alpha channel and clips
16-bit values, as ``ImageFolder`` and ``load_img`` do; TensorFlow keeps the top 8 bits. Only
modelhost's own default (no ``pipeline``) composites transparency on white and scales 16-bit
images by their range. The one deliberate departure from every library: EXIF orientation is
applied, so the model sees the photo upright, as the person who sent it does.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageOps

from ..types import RESAMPLES, TF_METHODS, Preprocessing, Resample

PILLOW = ("torchvision", "keras", "pillow")
TENSORFLOW = ("tf", "keras-dataset")
_PIL_RESAMPLE: dict[str, Image.Resampling] = {name: Image.Resampling[name.upper()]
                                              for name in RESAMPLES}
INTERPOLATIONS: dict[str, tuple[str, ...]] = {
    "": RESAMPLES, **{name: RESAMPLES for name in PILLOW},
    **{name: TF_METHODS for name in TENSORFLOW},
}
# Each library's own default, so that leaving ``resample`` out means what the library meant.
DEFAULT_INTERPOLATION: dict[str, Resample] = {
    "": "bilinear", "torchvision": "bilinear", "keras": "nearest", "pillow": "bicubic",
    "tf": "bilinear", "keras-dataset": "bilinear"}
# What ``decode = "fast"`` uses in place of a TensorFlow method (it resizes with Pillow).
_FAST_RESAMPLE = {"area": "box", "lanczos3": "lanczos", "lanczos5": "lanczos",
                  "gaussian": "bicubic", "mitchellcubic": "bicubic"}
# EXIF orientation → the NumPy steps of Pillow's exif_transpose, for TensorFlow's pixels.
_ORIENT = {
    2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2), 8: lambda a: np.rot90(a, 1),
}


def pil_resample(name: str) -> Image.Resampling:
    """The Pillow filter for ``name`` (TensorFlow methods map to their nearest Pillow filter,
    used only by ``decode = "fast"``)."""
    return _PIL_RESAMPLE[_FAST_RESAMPLE.get(name, name)]


def convert(image: Image.Image, channels: int) -> Image.Image:
    """The library conversion: ``convert("RGB")`` (or ``"L"``) unless already in that mode."""
    target = "L" if channels == 1 else "RGB"
    return image if image.mode == target else image.convert(target)


def run_pillow(image: Image.Image, prep: Preprocessing) -> np.ndarray:
    """The Pillow pipeline ``prep.pipeline`` (or modelhost's default) on an upright, converted,
    cropped image; returns height × width × channels."""
    width, height = prep.size
    resample = _PIL_RESAMPLE[prep.resample]
    if prep.pipeline == "keras":
        out = _keras(image, (width, height), resample, prep.aspect_crop)
    elif prep.pipeline == "pillow" or not prep.resize:
        out = image.resize((width, height), resample)  # also torchvision's Resize((h, w))
    else:
        out = _centre_crop(_torchvision_resize(image, prep.resize, resample), width, height)
    array = np.asarray(out, dtype=np.float32)
    return array[:, :, None] if array.ndim == 2 else array


def _torchvision_resize(image: Image.Image, short: int, resample) -> Image.Image:
    """``transforms.Resize(short)``: the shorter side becomes ``short``, the longer one
    ``int(short * long / short_side)`` (truncated, as torchvision does)."""
    w, h = image.size
    size = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    return image if size == image.size else image.resize(size, resample)


def _centre_crop(image: Image.Image, width: int, height: int) -> Image.Image:
    """``transforms.CenterCrop((height, width))``: zero padding first when the image is
    smaller, then offsets ``int(round((size - crop) / 2))``."""
    w, h = image.size
    if width > w or height > h:
        left = (width - w) // 2 if width > w else 0
        top = (height - h) // 2 if height > h else 0
        padded = Image.new(image.mode, (w + max(width - w, 0), h + max(height - h, 0)))
        padded.paste(image, (left, top))
        image, (w, h) = padded, padded.size
        if (w, h) == (width, height):
            return image
    top, left = round((h - height) / 2.0), round((w - width) / 2.0)
    return image.crop((left, top, left + width, top + height))


def _keras(image: Image.Image, size: tuple[int, int], resample, keep_aspect: bool):
    """``keras.utils.load_img(target_size=..., keep_aspect_ratio=...)``: no resize when the
    size already matches; the aspect crop is centred with floor division, as Keras does."""
    if image.size == size:
        return image
    if not keep_aspect:
        return image.resize(size, resample)
    w, h = image.size
    crop_h, crop_w = min(h, (w * size[1]) // size[0]), min(w, (h * size[0]) // size[1])
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    return image.resize(size, resample, box=(left, top, left + crop_w, top + crop_h))


def decode_tf(data: bytes, image: Image.Image, orientation: int, channels: int) -> np.ndarray:
    """Pixels as TensorFlow's ``decode_image`` gives them (upright); a format TensorFlow cannot
    read (TIFF) is decoded by Pillow with the library conversion."""
    tf = _tensorflow()
    try:
        pixels = tf.io.decode_image(data, channels=channels, expand_animations=False).numpy()
    except (tf.errors.InvalidArgumentError, ValueError):
        image.load()
        pixels = np.asarray(convert(ImageOps.exif_transpose(image), channels))
        return pixels[:, :, None] if pixels.ndim == 2 else pixels
    return _ORIENT[orientation](pixels) if orientation in _ORIENT else pixels


def run_tf(pixels: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """The TensorFlow pipeline on upright, cropped uint8 pixels; float32 height × width × c."""
    tf = _tensorflow()
    width, height = prep.size
    image = tf.constant(np.ascontiguousarray(pixels))
    if prep.pipeline == "tf":
        if prep.central_crop < 1.0:
            image = tf.image.central_crop(image, prep.central_crop)
        out = tf.image.resize(image, (height, width), method=prep.resample,
                              antialias=prep.antialias)
    else:
        if prep.aspect_crop:
            image = _crop_to_aspect(image, width, height)
        out = tf.image.resize(image, (height, width), method=prep.resample)
    return tf.cast(out, tf.float32).numpy()


def _crop_to_aspect(image: Any, width: int, height: int) -> Any:
    """Keras' ``smart_resize`` crop (``crop_to_aspect_ratio=True``): the largest centred box of
    the target's aspect ratio, sizes and offsets computed in float32 and truncated."""
    h, w = int(image.shape[0]), int(image.shape[1])
    crop_h = max(min(h, int(np.float32(w * height) / np.float32(width))), 1)
    crop_w = max(min(w, int(np.float32(h * width) / np.float32(height))), 1)
    top, left = int(np.float32(h - crop_h) / 2), int(np.float32(w - crop_w) / 2)
    return image[top : top + crop_h, left : left + crop_w]


def _tensorflow() -> Any:
    """TensorFlow, imported on first use: only the TensorFlow pipelines need it."""
    try:
        import tensorflow as tf
    except ImportError as exc:  # checked when the model loads, so requests never get here
        raise RuntimeError("the tf and keras-dataset pipelines run TensorFlow's own ops; "
                           'install it with pip install "modelhost[tensorflow]"') from exc
    return tf
