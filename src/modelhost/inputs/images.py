"""Bounded image decoding: header check, full decode, EXIF orientation, crop at (x, y).

Order matters for safety: the header is read and the pixel count checked before any pixel is
decoded (Pillow's own bomb check only warns far too late). By default the whole image is
decoded and the model's training pipeline (``pipelines.py``) runs on it, so the model sees the
pixels it was trained on. ``decode = "fast"`` keeps the old shortcuts, JPEG draft decoding at a
reduced DCT scale and one ``Image.resize(box=...)`` of the fractional crop box (decode + resize
of a 2–4 MP JPEG drops from 19–32 ms to 5–10 ms here, DESIGN.md), whose pixels differ; the
worker measures that drift at start. Every Pillow failure becomes a 4xx with a stable code.
"""

from __future__ import annotations

import io
import threading
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import InvalidInput, TooLarge, UnsupportedMedia
from ..types import Preprocessing, Region
from . import pipelines

ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
DEFAULT_POINT_CROP = 0.25
_CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)
_TORCH_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_TORCH_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
_PILLOW_LIMIT = threading.Lock()  # guards the moment Pillow's own bomb check is lifted
_SWAPS_AXES = {5, 6, 7, 8}  # EXIF orientations that turn the image by 90°
# Magic numbers of the allowed formats: a file that starts like one but does not open is
# corrupt (422), anything else is not a supported image at all (415).
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"GIF87a", b"GIF89a", b"BM", b"II*\0", b"MM\0*")


def to_tensor(data: bytes, prep: Preprocessing, region: Region, max_pixels: int) -> np.ndarray:
    """Decode ``data`` and return one preprocessed sample (no batch axis): the model's training
    pipeline on the fully decoded image, or the ``fast`` approximation when configured."""
    pixels = (_fast_pixels if prep.decode == "fast" else exact_pixels)(
        data, prep, region, max_pixels)
    return _normalise(pixels, prep)


def exact_pixels(data: bytes, prep: Preprocessing, region: Region, max_pixels: int) -> np.ndarray:
    """The pipeline's pixels (height × width × channels, before scaling): full decode, EXIF
    orientation, the crop around (x, y) cut at whole pixels, then the named pipeline."""
    image = _open(data, max_pixels)
    try:
        upright_size, orientation = _upright_size(image)
        left, top, right, bottom = whole_pixels(
            crop_box(upright_size, region, prep.default_crop), upright_size)
        if prep.pipeline in pipelines.TENSORFLOW:  # TensorFlow decodes: Pillow read the header
            with image:
                pixels = pipelines.decode_tf(data, image, orientation, prep.channels)
            return pipelines.run_tf(pixels[top:bottom, left:right], prep)
    except BaseException:
        image.close()
        raise
    upright = _decoded(image, orientation, prep.channels, library=bool(prep.pipeline))
    if (left, top, right, bottom) != (0, 0, *upright.size):
        upright = upright.crop((left, top, right, bottom))
    return pipelines.run_pillow(upright, prep)


def to_image(data: bytes, region: Region, default_crop: float, max_pixels: int) -> Image.Image:
    """Decode ``data`` into an upright RGB image cropped to ``region`` at whole pixels, not
    resized: for a user's pipeline that prepares images itself."""
    image = _open(data, max_pixels)
    try:
        upright_size, orientation = _upright_size(image)
        box = whole_pixels(crop_box(upright_size, region, default_crop), upright_size)
    except BaseException:
        image.close()
        raise
    upright = _decoded(image, orientation, 3, library=False)
    return upright.crop(box) if box != (0, 0, *upright.size) else upright


def _decoded(image: Image.Image, orientation: int, channels: int, library: bool) -> Image.Image:
    """The upright, converted image; the opened file is closed unless it *is* the result (an
    RGB photo needs no conversion, and closing it would break every later use)."""
    try:
        upright = _load_upright(image, orientation, channels, library)
    except BaseException:
        image.close()
        raise
    if upright is not image:
        image.close()
    return upright


def whole_pixels(box: tuple[float, float, float, float],
                 size: tuple[int, int]) -> tuple[int, int, int, int]:
    """``box`` with each edge rounded to the nearest whole pixel (halves up), at least one
    pixel wide and high, inside the image: the crop is cut from real pixels, never
    interpolated, so that the pipeline sees what it would see on a photo of that crop."""
    left, top = int(box[0] + 0.5), int(box[1] + 0.5)
    right = min(max(int(box[2] + 0.5), left + 1), size[0])
    bottom = min(max(int(box[3] + 0.5), top + 1), size[1])
    return min(left, right - 1), min(top, bottom - 1), right, bottom


def _fast_pixels(data: bytes, prep: Preprocessing, region: Region,
                 max_pixels: int) -> np.ndarray:
    """``decode = "fast"``: JPEG draft (DCT-scaled) decoding and one ``resize(box=...)`` of the
    fractional crop box; 3–4× faster on 2–4 MP photos, but not the training pipeline's pixels
    (its drift is measured at start and reported)."""
    image = _open(data, max_pixels)
    try:
        upright_size, orientation = _upright_size(image)
        box = crop_box(upright_size, region, prep.default_crop)
        _draft(image, prep, upright_size, box)
        image = _load_upright(image, orientation, prep.channels, library=False)
        resized = _resize(image, prep, _scaled(box, upright_size, image.size))
    finally:
        image.close()
    array = np.asarray(resized, dtype=np.float32)
    return array[:, :, None] if array.ndim == 2 else array


def check(data: bytes, region: Region, default_crop: float, max_pixels: int) -> None:
    """Reject what can be rejected from the header alone (format, pixel count, a point outside
    the image) before the image joins a batch; decoding happens later, in the model's worker."""
    image = _open(data, max_pixels)
    try:
        if region != Region():  # the EXIF lookup costs; only a crop needs the upright size
            crop_box(_upright_size(image)[0], region, default_crop)
    finally:
        image.close()


def _open(data: bytes, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError:
        image = _open_past_pillow_limit(data)  # our limit decides, and the message says it
    except UnidentifiedImageError as exc:
        if data.startswith(_SIGNATURES) or data[8:12] == b"WEBP":
            raise InvalidInput("the image data is corrupt or truncated",
                               "image_decode_failed") from exc
        raise UnsupportedMedia(
            "not an image in a supported format (" + ", ".join(ALLOWED_FORMATS) + ")",
            "unsupported_image_format",
        ) from exc
    except Exception as exc:  # Pillow raises many types for broken headers
        raise InvalidInput("the image header could not be read", "image_decode_failed") from exc
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidInput("the image has no pixels", "image_decode_failed")
    if width * height > max_pixels:
        raise TooLarge(
            f"the image is {width}×{height} pixels; the limit is {max_pixels:,} pixels",
            "image_too_large",
        )
    return image


def _open_past_pillow_limit(data: bytes) -> Image.Image:
    """The image opened without Pillow's global bomb check, which refuses past 2 ×
    ``Image.MAX_IMAGE_PIXELS`` without saying the size (some plugins, e.g. WebP's, check inside
    their header parser, so it cannot be side-stepped per format). Only the header is read;
    ``_open`` then applies ``max_pixels`` and names both numbers. The lock keeps concurrent
    callers from restoring each other's value; a concurrent ``Image.open`` elsewhere may see
    the check lifted for a moment, which loses nothing: every open here is checked after."""
    with _PILLOW_LIMIT:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            return Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _upright_size(image: Image.Image) -> tuple[tuple[int, int], int]:
    """The size as a person sees it (after EXIF orientation) and the orientation tag."""
    try:
        orientation = int(image.getexif().get(0x0112, 1))
    except Exception:
        orientation = 1
    w, h = image.size
    return ((h, w) if orientation in _SWAPS_AXES else (w, h)), orientation


def crop_box(
    size: tuple[int, int], region: Region, default_crop: float
) -> tuple[float, float, float, float]:
    """The box (left, top, right, bottom) in upright pixels that the model should see.

    With a point and no crop, the model's default crop (or 0.25) is used; with a crop and no
    point, the crop is centred. The square's side is ``crop × shorter side`` and it is clipped
    to the image.
    """
    width, height = size
    has_point = region.x is not None or region.y is not None
    crop = region.crop if region.crop is not None else (
        (default_crop or DEFAULT_POINT_CROP) if has_point else 0.0
    )
    if crop <= 0 or (crop >= 1 and not has_point):
        return (0.0, 0.0, float(width), float(height))
    x = width / 2 if region.x is None else region.x
    y = height / 2 if region.y is None else region.y
    if not (0 <= x < width and 0 <= y < height):
        raise InvalidInput(
            f"the point ({x:g}, {y:g}) is outside the {width}×{height} image", "invalid_parameter"
        )
    half = max(crop * min(width, height), 1.0) / 2
    left, top = max(0.0, x - half), max(0.0, y - half)
    right, bottom = min(float(width), x + half), min(float(height), y + half)
    return (left, top, max(right, left + 1), max(bottom, top + 1))


def _scaled(box, upright: tuple[int, int], decoded: tuple[int, int]):
    """``box`` in the decoded image's pixels (smaller than upright after a JPEG draft)."""
    sx, sy = decoded[0] / upright[0], decoded[1] / upright[1]
    left, top, right, bottom = box
    return (left * sx, top * sy, min(right * sx, decoded[0]), min(bottom * sy, decoded[1]))


def _draft(image: Image.Image, prep: Preprocessing, upright: tuple[int, int], box) -> None:
    """Ask the JPEG decoder for the smallest DCT scale that still covers the network input."""
    if image.format != "JPEG":
        return
    box_w, box_h = box[2] - box[0], box[3] - box[1]
    if prep.resize:
        need = prep.resize / min(box_w, box_h)
    else:
        need = max(prep.size[0] / box_w, prep.size[1] / box_h)
    if need >= 1:
        return
    w, h = image.size  # draft works on stored (not upright) dimensions; the scale is uniform
    mode = "L" if prep.channels == 1 else "RGB"
    try:
        image.draft(mode, (max(1, int(w * need + 0.999)), max(1, int(h * need + 0.999))))
    except Exception as exc:
        raise InvalidInput("the JPEG could not be decoded", "image_decode_failed") from exc


def _load_upright(image: Image.Image, orientation: int, channels: int,
                  library: bool) -> Image.Image:
    """Decode the first frame, apply EXIF orientation, convert to RGB or L: as the training
    library does (``library``), or modelhost's way (white behind transparency, 16-bit scaled
    by its range)."""
    try:
        image.seek(0)
        image.load()
        if orientation != 1:
            image = ImageOps.exif_transpose(image)
        return pipelines.convert(image, channels) if library else _convert(image, channels)
    except (TooLarge, InvalidInput):
        raise
    except Exception as exc:  # truncated data, bad chunks, decoder errors, MemoryError
        raise InvalidInput("the image data is corrupt or truncated", "image_decode_failed") from exc


def _convert(image: Image.Image, channels: int) -> Image.Image:
    target = "L" if channels == 1 else "RGB"
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        image = _to_8bit(image)
        mode = "L"
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        background.alpha_composite(image.convert("RGBA"))
        image = background
    return image if image.mode == target else image.convert(target)


def _to_8bit(image: Image.Image) -> Image.Image:
    """Scale 16-bit and float images by their real range instead of clipping at 255."""
    array = np.asarray(image, dtype=np.float32)
    top = 65535.0 if image.mode.startswith("I;16") else float(max(array.max(), 1.0))
    if image.mode == "F" and top <= 1.0:
        top = 1.0
    return Image.fromarray(np.clip(array * (255.0 / top), 0, 255).astype(np.uint8), "L")


def _resize(image: Image.Image, prep: Preprocessing, box) -> Image.Image:
    """``decode = "fast"``: the pipeline's geometry as one fractional box, cropped and resized
    in one call. With ``resize``, the centre ``size`` after scaling the shorter side to it
    (torchvision's Resize + CenterCrop); with an aspect crop, the largest centred box of the
    input's aspect ratio; with ``central_crop``, that centred fraction."""
    width, height = prep.size
    left, top, right, bottom = box
    box_w, box_h = right - left, bottom - top
    if prep.resize:
        scale = prep.resize / min(box_w, box_h)
        box_w, box_h = min(width / scale, box_w), min(height / scale, box_h)
    elif prep.aspect_crop:
        box_w, box_h = min(box_w, box_h * width / height), min(box_h, box_w * height / width)
    elif prep.pipeline == "tf":
        box_w, box_h = box_w * prep.central_crop, box_h * prep.central_crop
    cx, cy = (left + right) / 2, (top + bottom) / 2
    box = (cx - box_w / 2, cy - box_h / 2, cx + box_w / 2, cy + box_h / 2)
    return image.resize((width, height), pipelines.pil_resample(prep.resample), box=box)


def _normalise(array: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """Channel order, scaling preset and layout: the same for every pipeline."""
    if prep.bgr or prep.scaling == "caffe":
        array = array[:, :, ::-1]
    array = _scale(array, prep)
    if prep.layout == "NCHW":
        array = array.transpose(2, 0, 1)
    return np.ascontiguousarray(array, dtype=prep.dtype)


def _scale(array: np.ndarray, prep: Preprocessing) -> np.ndarray:
    match prep.scaling:
        case "unit":
            return array * (1 / 255.0)
        case "tf":
            return array * (1 / 127.5) - 1.0
        case "inception128":
            return (array - 127.0) * (1 / 128.0)
        case "caffe":
            return array - _CAFFE_MEAN_BGR[: array.shape[2]]
        case "torch":
            return (array * (1 / 255.0) - _TORCH_MEAN[: array.shape[2]]) / _TORCH_STD[
                : array.shape[2]
            ]
        case "meanstd":
            mean = np.array(prep.mean, dtype=np.float32)[: array.shape[2]]
            std = np.array(prep.std, dtype=np.float32)[: array.shape[2]]
            return (array - mean) / std
        case _:
            return array
