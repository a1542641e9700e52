"""What ``decode = "fast"`` costs in answers: measured once at start, on the model itself.

The fast path (JPEG draft decoding, one-call box resize) gives different pixels from the
training pipeline; on real photos served scores moved by up to 0.06 and a top-1 label flipped
(DESIGN.md). So a model served fast is run on the same images both ways when it loads, and the
largest score difference and the top-1 agreement are reported (``inspect``,
``GET /api/models/{model}``, the start-up log line). The images are the model's ``samples/``
(real photos the owner chose) or, without them, generated photo-like JPEGs of camera sizes.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from ..postprocess import probabilities
from ..types import Drift, Preprocessing, Region
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


def sample_images(model_dir: Path) -> tuple[list[bytes], str]:
    """The model's ``samples/`` images (up to 16), else generated photo-like JPEGs."""
    folder = model_dir / "samples"
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in SAMPLE_SUFFIXES) \
        if folder.is_dir() else []
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
