"""Two decoding defects found by issue 15, each through the real code path:

1. a ``pipeline.py`` class with ``predict_image`` got a closed image for every RGB photo
   ("Operation on closed image", 500 ``model_failed``): here the worker's own batch step runs a
   real user class on real photos;
2. an image past Pillow's own bomb limit got "the image has too many pixels" without the sizes
   that docs/errors.md promises.
"""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image, ImageOps
from skimage import data as photos

from modelhost.errors import TooLarge
from modelhost.inputs.images import check, to_tensor
from modelhost.repository import load_repository
from modelhost.runtimes.base import load_runtime
from modelhost.types import Preprocessing, Region, RuntimeOptions
from modelhost.workers import worker
from modelhost.workers.messages import Batch, Item, Result, Start, decode, tensor

from ..security import hostile
from ..support import image_bytes

MEAN_COLOUR = '''
import numpy as np


class MeanColour:
    """Scores each channel by its mean: it reads every pixel of the image it is given."""

    def __init__(self, model_dir):
        pass

    def predict_image(self, image):
        r, g, b = np.asarray(image, dtype=np.float64).reshape(-1, 3).mean(axis=0) / 255
        return {"red": r, "green": g, "blue": b, "size": image.width * 1000 + image.height}
'''


def _exif_portrait() -> tuple[bytes, Image.Image]:
    """A landscape photo stored with EXIF orientation 6 (shown turned 90° clockwise)."""
    stored = Image.fromarray(photos.coffee())  # 600×400 as stored
    exif = Image.Exif()
    exif[0x0112] = 6
    data = image_bytes(stored, "JPEG", quality=92, exif=exif.tobytes())
    return data, ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")


def _cases() -> dict[str, tuple[bytes, Image.Image]]:
    astronaut = Image.fromarray(photos.astronaut())
    rgba = astronaut.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(astronaut.size))
    grey = Image.fromarray(photos.camera())
    cases = {
        "RGB JPEG photo": image_bytes(astronaut, "JPEG", quality=90),
        "RGB PNG photo": image_bytes(Image.fromarray(photos.chelsea()), "PNG"),
        "RGBA PNG": image_bytes(rgba, "PNG"),
        "greyscale PNG": image_bytes(grey, "PNG"),
    }
    expected = {}
    for name, data in cases.items():
        image = Image.open(io.BytesIO(data))
        if image.mode == "RGBA":  # modelhost's own conversion: white behind transparency
            white = Image.new("RGBA", image.size, (255, 255, 255, 255))
            white.alpha_composite(image)
            image = white
        expected[name] = (data, image.convert("RGB"))
    expected["EXIF-rotated JPEG"] = _exif_portrait()
    return expected


@pytest.fixture(scope="module")
def mean_colour(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mean_colour")
    (folder / "pipeline.py").write_text(MEAN_COLOUR)
    (folder / "labels.txt").write_text("red\ngreen\nblue\nsize\n")
    spec = load_repository(folder)[0]
    spec = replace(spec, options=RuntimeOptions(trust_code=True))
    return spec, load_runtime(spec, threads=1)


def test_predict_image_class_gets_open_upright_images(mean_colour):
    spec, runtime = mean_colour
    cases = _cases()
    payload = b"".join(data for data, _ in cases.values())
    items, offset = [], 0
    for data, _ in cases.values():
        items.append(Item(offset, offset + len(data), Region()))
        offset += len(data)
    start = Start(spec, threads=1, max_pixels=10**8)
    batch = Batch(1, tuple(items))
    frame = worker._infer(runtime, worker._decode_batch(Preprocessing(), start, True, batch,
                                                         payload))
    header, body = decode(frame)
    assert isinstance(header, Result), header
    assert header.errors == () and header.ok == tuple(range(len(cases)))
    scores = tensor(header, body)
    for row, (name, (_, image)) in zip(scores, cases.items(), strict=True):
        mean = np.asarray(image, dtype=np.float64).reshape(-1, 3).mean(axis=0) / 255
        np.testing.assert_allclose(row[:3], mean, atol=1e-6, err_msg=name)
        assert row[3] == image.width * 1000 + image.height, name


BOMBS = {  # what the header claims; each file is small
    "png 30000x30000": (lambda: hostile.png(30000, 30000, rows=1), 30000, 30000),
    "png 12000x12000": (lambda: hostile.png(12000, 12000, rows=1), 12000, 12000),
    "jpeg 60000x60000": (lambda: hostile.jpeg_with_size(60000, 60000), 60000, 60000),
    "gif 65535x65535": (lambda: hostile.gif_with_screen(65535, 65535), 65535, 65535),
    "webp 16383x16383": (lambda: hostile.webp_with_size(16383, 16383), 16383, 16383),
    "tiff 100000x100000": (lambda: hostile.tiff_with_size(100000, 100000), 100000, 100000),
    "bmp 50000x50000": (lambda: hostile.bmp_with_size(50000, 50000), 50000, 50000),
}


@pytest.mark.parametrize("name", list(BOMBS))
def test_too_many_pixels_says_the_size_and_the_limit(name):
    """Past Pillow's own limit (2 × 89 Mpx; WebP's plugin checks inside its parser) as under
    it: the message names the image's size and modelhost's limit."""
    make, width, height = BOMBS[name]
    bomb = make()
    for call in (lambda: check(bomb, Region(), 0.0, 25_000_000),
                 lambda: to_tensor(bomb, Preprocessing(), Region(), 25_000_000)):
        with pytest.raises(TooLarge) as caught:
            call()
        assert caught.value.code == "image_too_large"
        assert caught.value.message == (f"the image is {width}×{height} pixels; "
                                        "the limit is 25,000,000 pixels")
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # Pillow's own check is back in place
