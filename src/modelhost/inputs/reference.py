"""The reference libraries' own pipelines, for ``modelhost inspect --image``: the proof, on the
user's own photo, that modelhost feeds what the training library would.

Each function calls the library itself (torchvision's transforms, ``keras.utils.load_img``,
Pillow, TensorFlow's ops) the way a training script does; modelhost's own code is not used, so
a difference means modelhost is wrong. The libraries ignore EXIF orientation, modelhost does
not: the photo is turned upright first (with Pillow; for TensorFlow, TensorFlow's decoded pixels
are turned the same way), which is the one documented departure.
"""

from __future__ import annotations

import importlib
import io

import numpy as np
from PIL import Image, ImageOps

from ..types import Preprocessing
from .pipelines import _ORIENT, TENSORFLOW


def library_pixels(data: bytes, prep: Preprocessing) -> tuple[np.ndarray, str] | None:
    """The library's pixels (height × width × channels, before scaling) for the whole photo
    and the library's name and version; None when that library is not installed."""
    try:
        if prep.pipeline in TENSORFLOW:
            return _tensorflow(data, prep), _version("tensorflow")
        upright = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
        image = upright.convert("L" if prep.channels == 1 else "RGB")
        if prep.pipeline == "keras":
            return _keras(image, prep), _version("keras")
        if prep.pipeline == "torchvision" or (not prep.pipeline and prep.resize):
            return _torchvision(image, prep), _version("torchvision")
    except ImportError:
        return None
    resized = image.resize(prep.size, Image.Resampling[prep.resample.upper()])
    return _array(resized), _version("PIL")


def _torchvision(image: Image.Image, prep: Preprocessing) -> np.ndarray:
    from torchvision import transforms

    mode = transforms.InterpolationMode(prep.resample)
    width, height = prep.size
    if not prep.resize:
        return _array(transforms.Resize((height, width), mode)(image))
    return _array(transforms.Compose([transforms.Resize(prep.resize, mode),
                                      transforms.CenterCrop((height, width))])(image))


def _keras(image: Image.Image, prep: Preprocessing) -> np.ndarray:
    from keras.utils import img_to_array, load_img

    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=0)  # load_img reads files; PNG is lossless
    width, height = prep.size
    return img_to_array(load_img(buffer, target_size=(height, width),
                                 interpolation=prep.resample,
                                 color_mode="grayscale" if prep.channels == 1 else "rgb",
                                 keep_aspect_ratio=prep.aspect_crop))


def _tensorflow(data: bytes, prep: Preprocessing) -> np.ndarray:
    import tensorflow as tf
    from keras.preprocessing.image import smart_resize

    pixels = tf.io.decode_image(data, channels=prep.channels, expand_animations=False).numpy()
    orientation = Image.open(io.BytesIO(data)).getexif().get(0x0112, 1)
    pixels = _ORIENT[orientation](pixels) if orientation in _ORIENT else pixels
    width, height = prep.size
    if prep.pipeline == "keras-dataset" and prep.aspect_crop:
        return np.asarray(smart_resize(pixels, (height, width), interpolation=prep.resample))
    image = tf.constant(np.ascontiguousarray(pixels))
    if prep.pipeline == "tf" and prep.central_crop < 1:
        image = tf.image.central_crop(image, prep.central_crop)
    antialias = prep.antialias and prep.pipeline == "tf"
    out = tf.image.resize(image, (height, width), method=prep.resample, antialias=antialias)
    return tf.cast(out, tf.float32).numpy()


def _array(image: Image.Image) -> np.ndarray:
    array = np.asarray(image, dtype=np.float32)
    return array[:, :, None] if array.ndim == 2 else array


def _version(module: str) -> str:
    """``name version`` from the imported module itself (TensorFlow installs under several
    distribution names, e.g. tensorflow-cpu)."""
    return f"{module} {getattr(importlib.import_module(module), '__version__', '')}".strip()
