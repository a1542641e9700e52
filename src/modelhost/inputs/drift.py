"""What ``decode = "fast"`` costs in answers: measured once at start, on the model itself.

The fast path (JPEG draft decoding, one-call box resize) gives different pixels from the
training pipeline; on real photos served scores moved by up to 0.06 and a top-1 label flipped
(DESIGN.md). So a model served fast is run on the same images both ways when it loads, and the
largest score difference and the top-1 agreement are reported (``inspect``,
``GET /api/models/{model}``, the start-up log line). The images are the model's ``samples/``
(real photos the owner chose) or, without them, generated photo-like JPEGs of camera sizes.

The model's sample images are read here for every check that runs a model on them
(:func:`sample_files`): this drift, layout tuning, and :func:`sample_inputs`, the prepared
batch on which conversion, execution providers and INT8 are compared with the original.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from ..postprocess import probabilities
from ..types import Drift, ModelSpec, Preprocessing, Region
from .images import to_tensor

SAMPLE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MAX_SAMPLES = 16
_GENERATED_SIZES = ((1600, 1200), (1200, 1600), (2048, 1365), (1000, 750))


def measure(predict: Callable[[np.ndarray], np.ndarray], prep: Preprocessing, output_kind: str,
            model_dir: Path, max_pixels: int) -> Drift:
    """Run the model on each image decoded exactly and fast; compare the probabilities."""
    images, source = sample_images(model_dir)
    exact, fast = replace(prep, decode="exact"), replace(prep, decode="fast")
    worst, agree = 0.0, 0
    for data in images:
        rows = predict(np.stack([to_tensor(data, exact, Region(), max_pixels),
                                 to_tensor(data, fast, Region(), max_pixels)]))
        p_exact, p_fast = (probabilities(np.asarray(r).reshape(-1), output_kind) for r in rows)
        worst = max(worst, float(np.abs(p_exact - p_fast).max()))
        agree += int(p_exact.argmax() == p_fast.argmax())
    return Drift(worst, agree / len(images), len(images), source)


def sample_files(folder: Path) -> list[Path]:
    """The images in ``folder`` (a model's ``samples/``), in name order; none if it is not a
    folder. Every check that runs a model on its samples reads them here."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in SAMPLE_SUFFIXES)


def sample_images(model_dir: Path) -> tuple[list[bytes], str]:
    """The model's ``samples/`` images (up to 16), else generated photo-like JPEGs."""
    files = sample_files(model_dir / "samples")
    if files:
        return [p.read_bytes() for p in files[:MAX_SAMPLES]], "samples/"
    return [photo_like(size, seed) for seed, size in enumerate(_GENERATED_SIZES)], "generated"


def photo_like(size: tuple[int, int], seed: int) -> bytes:
    """A JPEG with a photo's statistics: smooth shapes of colour (a coarse random field
    enlarged bicubically), edges and fine grain, saved at quality 90 like a camera's file."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (9, 12, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)
    pixels = np.asarray(image, dtype=np.int16)
    pixels = pixels + rng.normal(0, 6, pixels.shape).astype(np.int16)  # grain
    pixels[:, size[0] // 3 : size[0] // 3 + 4] = 20  # a hard edge, like a pole or a frame
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def sample_inputs(spec: ModelSpec, prep: Preprocessing, count: int = 8) -> np.ndarray:
    """Inputs prepared as requests are, for the checks that compare two runtimes (conversion,
    providers, INT8): noise, smooth synthetic images, and the model's ``samples/``."""
    from PIL import ImageDraw

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8))
              for _ in range(count // 2)]
    for i in range(count - len(images)):
        yy, xx = np.mgrid[0:96, 0:96]
        base = np.stack([xx * 2.5, yy * 2.5, (xx + yy) * 1.3], axis=-1) % 256
        image = Image.fromarray(np.roll(base, 20 * i, axis=2 - i % 3).astype(np.uint8))
        ImageDraw.Draw(image).ellipse((10 + 5 * i, 20, 60, 70 + 3 * i), fill=(30 * i, 200, 90))
        images.append(image)
    folders = [spec.path / "samples"] if spec.path.is_dir() else []
    folders.append(spec.path.parent / "samples")
    files = [p for folder in folders for p in sample_files(folder)]
    encoded = [_png(image) for image in images] + [p.read_bytes() for p in files[:32]]
    return np.stack([to_tensor(data, prep, Region(), 50_000_000) for data in encoded])


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
