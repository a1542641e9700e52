"""Each named training pipeline against its library's own output on the same file.

The references are the libraries themselves: torchvision's ``Resize`` + ``CenterCrop`` on
``Image.open(f).convert("RGB")`` (what ``ImageFolder`` loads), ``keras.utils.load_img`` +
``img_to_array``, Pillow's ``Image.resize``, ``keras.utils.image_dataset_from_directory`` and
TensorFlow's ``decode_image`` + ``central_crop`` + ``resize``. modelhost's tensor must equal
them exactly (the contract in docs/models.md; the measured TensorFlow tolerance is 0, since
the TensorFlow pipelines run TensorFlow's own ops).
"""

from __future__ import annotations

import functools
import io
import os
from pathlib import Path

import numpy as np
import pytest
import torchvision  # noqa: F401  before TensorFlow: torch imported after it crashes (triton)
from PIL import Image, ImageOps
from skimage import data as photos
from sklearn.datasets import load_sample_images

from modelhost.inputs.images import exact_pixels, to_tensor, whole_pixels
from modelhost.inputs.pipelines import _ORIENT, DEFAULT_INTERPOLATION
from modelhost.types import Preprocessing, Region

from ..support import image_bytes

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
MAX_PIXELS = 10**8


def _photo_like(size: tuple[int, int]) -> Image.Image:
    """A real photo stretched to ``size``: photo statistics at an awkward size."""
    return Image.fromarray(photos.astronaut()).resize(size, Image.Resampling.BICUBIC)


def _exif_rotated() -> bytes:
    stored = Image.fromarray(photos.coffee()).resize((600, 512))  # landscape as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # shown as a 512×600 portrait
    return image_bytes(stored, "JPEG", quality=90, exif=exif.tobytes())


def _rgba() -> Image.Image:
    image = Image.fromarray(photos.chelsea()).convert("RGBA")
    image.putalpha(Image.linear_gradient("L").resize(image.size))
    return image


def _sixteen_bit() -> Image.Image:
    ramp = np.linspace(0, 65535, 301 * 207, dtype=np.float64).reshape(207, 301)
    return Image.fromarray(ramp.astype(np.uint16))


def _files(folder: Path) -> dict[str, Path]:
    china, flower = load_sample_images().images
    images = {
        "astronaut 512x512.jpg": (Image.fromarray(photos.astronaut()), "JPEG"),
        "china 640x427.jpg": (Image.fromarray(china), "JPEG"),
        "flower 640x427.png": (Image.fromarray(flower), "PNG"),
        "odd 333x201.jpg": (_photo_like((333, 201)), "JPEG"),
        "portrait 512x600.jpg": (_photo_like((512, 600)), "JPEG"),
        "large 4000x3000.jpg": (_photo_like((4000, 3000)), "JPEG"),
        "tiny 9x9.png": (_photo_like((9, 9)), "PNG"),
        "grey 451x300.jpg": (Image.fromarray(photos.chelsea()).convert("L"), "JPEG"),
        "alpha 451x300.png": (_rgba(), "PNG"),
        "sixteen-bit 301x207.png": (_sixteen_bit(), "PNG"),
    }
    encoded = {name: image_bytes(image, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
               for name, (image, fmt) in images.items()}
    encoded["exif portrait 512x600.jpg"] = _exif_rotated()
    for name, data in encoded.items():
        (folder / name).write_bytes(data)
    return {name: folder / name for name in encoded}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    return _files(tmp_path_factory.mktemp("photos"))


def _ours(path: Path, region: Region = Region(), **prep) -> np.ndarray:
    return exact_pixels(path.read_bytes(), Preprocessing(**prep), region, MAX_PIXELS)


def _upright(path: Path) -> Image.Image:
    """The file as its reference library opens it, turned upright by its EXIF tag (the one
    step modelhost adds: a phone photo is seen as the person took it)."""
    return ImageOps.exif_transpose(Image.open(path))


@functools.cache
def _upright_png(path: Path) -> bytes:
    """The upright photo as a lossless file, for a library that reads files (stored, not
    compressed: a 4000×3000 PNG takes seconds to compress)."""
    return image_bytes(_upright(path), "PNG", compress_level=0)


ALL = ["astronaut 512x512.jpg", "china 640x427.jpg", "flower 640x427.png", "odd 333x201.jpg",
         "portrait 512x600.jpg", "large 4000x3000.jpg", "tiny 9x9.png", "grey 451x300.jpg",
         "alpha 451x300.png", "sixteen-bit 301x207.png", "exif portrait 512x600.jpg"]
SMALL = [name for name in ALL if not name.startswith("large")]


def _names(first: bool) -> list[str]:
    """Every file for a pipeline's first case; without the 12 MP photo for the others (its
    decode alone takes a quarter of a second on every call)."""
    return ALL if first else SMALL


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "lanczos"])
def test_torchvision_resize_and_centre_crop(files, interpolation):
    from torchvision import transforms
    from torchvision.transforms import InterpolationMode

    mode = InterpolationMode(interpolation)
    for resize, crop in ((256, (224, 224)), (40, (63, 31))):
        pipeline = transforms.Compose([transforms.Resize(resize, mode, antialias=True),
                                       transforms.CenterCrop(crop)])
        for name in _names(interpolation == "bilinear" and resize == 256):
            expected = np.asarray(pipeline(_upright(files[name]).convert("RGB")), np.float32)
            ours = _ours(files[name], size=(crop[1], crop[0]), pipeline="torchvision",
                         resize=resize, resample=interpolation)
            np.testing.assert_array_equal(ours, expected, err_msg=f"{name} {resize} {crop}")


def test_torchvision_resize_to_a_size_without_crop(files):
    from torchvision import transforms

    pipeline = transforms.Resize((150, 200))
    for name in SMALL:
        expected = np.asarray(pipeline(_upright(files[name]).convert("RGB")), np.float32)
        ours = _ours(files[name], size=(200, 150), pipeline="torchvision", resample="bilinear")
        np.testing.assert_array_equal(ours, expected, err_msg=name)


@pytest.mark.parametrize(("interpolation", "keep_aspect"), [
    ("nearest", False), ("bilinear", True), ("bicubic", False), ("lanczos", True)])
def test_keras_load_img(files, interpolation, keep_aspect):
    from keras.utils import img_to_array, load_img

    for name in _names(interpolation == "nearest"):
        upright = io.BytesIO(_upright_png(files[name]))
        expected = img_to_array(load_img(upright, target_size=(160, 224),
                                         interpolation=interpolation,
                                         keep_aspect_ratio=keep_aspect))
        ours = _ours(files[name], size=(224, 160), pipeline="keras", resample=interpolation,
                     aspect_crop=keep_aspect)
        np.testing.assert_array_equal(ours, expected, err_msg=name)


@pytest.mark.parametrize("interpolation", ["bicubic", "box", "hamming"])
def test_pillow_resize(files, interpolation):
    resample = Image.Resampling[interpolation.upper()]
    for name in _names(interpolation == "bicubic"):
        expected = np.asarray(_upright(files[name]).convert("RGB").resize((97, 131), resample),
                              np.float32)
        ours = _ours(files[name], size=(97, 131), pipeline="pillow", resample=interpolation)
        np.testing.assert_array_equal(ours, expected, err_msg=name)


def test_pillow_default_is_pillows_default_bicubic(files):
    from modelhost.preprocessing import resolve
    from modelhost.types import ModelConfig, ModelInfo, TensorSpec

    info = ModelInfo((TensorSpec("x", "float32", (-1, 3, 64, 48)),), ())
    prep = resolve(ModelConfig(pipeline="pillow"), info)
    expected = np.asarray(Image.open(files["china 640x427.jpg"]).resize((48, 64)), np.float32)
    np.testing.assert_array_equal(exact_pixels(files["china 640x427.jpg"].read_bytes(), prep,
                                               Region(), MAX_PIXELS), expected)


def _tf_upright(path: Path):
    """TensorFlow's own decode, turned upright with TensorFlow's own rotation (orientation 6
    is a quarter turn clockwise)."""
    import tensorflow as tf

    pixels = tf.io.decode_image(path.read_bytes(), channels=3, expand_animations=False)
    return tf.image.rot90(pixels, k=3) if path.name.startswith("exif") else pixels


@pytest.mark.parametrize(("method", "antialias", "fraction"), [
    ("bilinear", False, 1.0), ("bilinear", True, 0.875), ("nearest", False, 0.875),
    ("bicubic", True, 1.0), ("area", False, 1.0), ("lanczos3", True, 0.875),
    ("mitchellcubic", False, 1.0)])
def test_tf_image_resize(files, method, antialias, fraction):
    import tensorflow as tf

    for name in _names(method == "bilinear" and not antialias):
        image = _tf_upright(files[name])
        if fraction < 1:
            image = tf.image.central_crop(image, fraction)
        expected = tf.image.resize(image, (160, 224), method=method, antialias=antialias)
        ours = _ours(files[name], size=(224, 160), pipeline="tf", resample=method,
                     antialias=antialias, central_crop=fraction)
        np.testing.assert_array_equal(ours, tf.cast(expected, tf.float32).numpy(), err_msg=name)


@pytest.mark.parametrize(("interpolation", "crop_to_aspect_ratio"), [
    ("bilinear", False), ("bilinear", True), ("bicubic", True), ("nearest", False)])
def test_keras_image_dataset_from_directory(files, tmp_path, crop_to_aspect_ratio,
                                            interpolation):
    import keras

    names = [n for n in _names(interpolation == "bilinear" and not crop_to_aspect_ratio)
             if not n.startswith("exif")]  # the dataset reader ignores EXIF
    for index, name in enumerate(names):
        (tmp_path / f"{index:02d}{Path(name).suffix}").write_bytes(files[name].read_bytes())
    dataset = keras.utils.image_dataset_from_directory(
        tmp_path, labels=None, image_size=(160, 224), interpolation=interpolation,
        crop_to_aspect_ratio=crop_to_aspect_ratio, shuffle=False, batch_size=64, verbose=False)
    expected = next(iter(dataset)).numpy()
    for row, name in zip(expected, names, strict=True):
        ours = _ours(files[name], size=(224, 160), pipeline="keras-dataset",
                     resample=interpolation, aspect_crop=crop_to_aspect_ratio)
        np.testing.assert_array_equal(ours, row, err_msg=name)


def test_exif_orientations_match_pillow():
    """The NumPy turns applied to TensorFlow's pixels are Pillow's exif_transpose."""
    pixels = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    for orientation, turn in _ORIENT.items():
        exif = Image.Exif()
        exif[0x0112] = orientation
        image = Image.fromarray(pixels)
        image.info["exif"] = exif.tobytes()
        image.getexif()[0x0112] = orientation
        np.testing.assert_array_equal(turn(pixels), np.asarray(ImageOps.exif_transpose(image)),
                                      err_msg=str(orientation))


@pytest.mark.parametrize("pipeline", ["torchvision", "keras", "pillow", "tf", "keras-dataset"])
def test_crop_point_is_cut_at_whole_pixels_then_the_pipeline_runs(files, pipeline):
    """The rule in docs/models.md: the square around (x, y), each edge rounded to the nearest
    whole pixel of the upright image, is cut first; the pipeline runs on that crop as if it
    were the photo. The reference runs the library on the cropped photo saved losslessly."""
    path = files["exif portrait 512x600.jpg"]
    region = Region(x=300.3, y=210.6, crop=0.4)
    box = whole_pixels((300.3 - 102.4, 210.6 - 102.4, 300.3 + 102.4, 210.6 + 102.4), (512, 600))
    assert box == (198, 108, 403, 313)
    ours = _ours(path, region, size=(96, 80), pipeline=pipeline,
                 resize=100 if pipeline == "torchvision" else 0,
                 resample=DEFAULT_INTERPOLATION[pipeline])
    left, top, right, bottom = box
    if pipeline in ("tf", "keras-dataset"):
        import tensorflow as tf

        expected = tf.image.resize(_tf_upright(path)[top:bottom, left:right], (80, 96)).numpy()
    else:
        expected = _library(pipeline, _upright(path).convert("RGB").crop(box))
    np.testing.assert_array_equal(ours, expected)


def _library(pipeline: str, image: Image.Image) -> np.ndarray:
    """The library's own pipeline on a PIL image (each with its own default interpolation)."""
    if pipeline == "torchvision":
        from torchvision import transforms

        return np.asarray(transforms.Compose([transforms.Resize(100),
                                              transforms.CenterCrop((80, 96))])(image),
                          np.float32)
    if pipeline == "keras":
        from keras.utils import img_to_array, load_img

        return img_to_array(load_img(io.BytesIO(image_bytes(image, "PNG")),
                                     target_size=(80, 96)))
    return np.asarray(image.resize((96, 80)), np.float32)


@pytest.mark.parametrize("prep", [
    {"pipeline": "torchvision", "resize": 256, "resample": "bicubic"},
    {"pipeline": "keras-dataset", "aspect_crop": True, "resample": "bilinear"},
    {"pipeline": "keras", "aspect_crop": True, "resample": "nearest"},
    {"pipeline": "tf", "central_crop": 0.6, "resample": "area"},
], ids=["torchvision", "keras-dataset aspect", "keras aspect", "tf central_crop"])
def test_fast_decode_is_close_but_not_exact(files, prep):
    """``decode = "fast"`` (JPEG draft + one box resize with the pipeline's geometry)
    approximates the exact pipeline: near on average, different in pixels, which is why it is
    opt-in and measured."""
    data = files["large 4000x3000.jpg"].read_bytes()
    common = {"size": (224, 160), "scaling": "none", "layout": "NHWC", **prep}
    exact = to_tensor(data, Preprocessing(**common), Region(), MAX_PIXELS)
    fast = to_tensor(data, Preprocessing(**common, decode="fast"), Region(), MAX_PIXELS)
    assert exact.shape == fast.shape == (160, 224, 3)
    assert 0.5 < np.abs(exact - fast).mean() < 12  # 2.5–5 measured
