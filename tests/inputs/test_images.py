"""Image decoding and preprocessing on real Pillow images: modes, EXIF, crops, caps, scaling."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from modelhost.errors import InvalidInput, TooLarge, UnsupportedMedia
from modelhost.inputs.images import crop_box, to_tensor
from modelhost.types import Preprocessing, Region

from ..support import halves, image_bytes

RGB8 = Preprocessing(size=(8, 8), layout="NHWC", scaling="none")


def tensor(data: bytes, prep: Preprocessing = RGB8, region: Region = Region(),
           max_pixels: int = 10**8) -> np.ndarray:
    return to_tensor(data, prep, region, max_pixels)


def test_solid_colour_survives_every_scaling_preset():
    data = image_bytes(Image.new("RGB", (32, 32), (255, 128, 0)))
    expected = {
        "none": [255, 128, 0],
        "unit": [1.0, 128 / 255, 0.0],
        "tf": [1.0, 128 / 127.5 - 1, -1.0],
        "inception128": [1.0, 1 / 128, -127 / 128],
        "caffe": [0 - 103.939, 128 - 116.779, 255 - 123.68],  # BGR order
        "torch": [(1 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, (0 - 0.406) / 0.225],
    }
    for scaling, values in expected.items():
        out = tensor(data, Preprocessing(size=(4, 4), layout="NHWC", scaling=scaling))
        assert out.shape == (4, 4, 3) and out.dtype == np.float32
        np.testing.assert_allclose(out[0, 0], values, rtol=1e-5, atol=1e-5)


def test_meanstd_bgr_and_nchw():
    data = image_bytes(Image.new("RGB", (10, 10), (10, 20, 30)))
    prep = Preprocessing(size=(5, 3), layout="NCHW", scaling="meanstd", bgr=True,
                         mean=(30.0, 20.0, 10.0), std=(2.0, 4.0, 5.0))
    out = tensor(data, prep)
    assert out.shape == (3, 3, 5)
    np.testing.assert_allclose(out[:, 0, 0], [0.0, 0.0, 0.0])


def test_uint8_models_get_uint8():
    out = tensor(image_bytes(Image.new("RGB", (9, 9), (1, 2, 3))),
                 Preprocessing(size=(3, 3), layout="NHWC", scaling="none", dtype="uint8"))
    assert out.dtype == np.uint8 and out[0, 0].tolist() == [1, 2, 3]


@pytest.mark.parametrize(("mode", "colour", "expected"), [
    ("L", 200, [200, 200, 200]),
    ("1", 1, [255, 255, 255]),
    ("CMYK", (0, 255, 255, 0), [255, 0, 0]),
    ("RGBA", (0, 0, 255, 255), [0, 0, 255]),
    ("RGBA", (0, 0, 255, 0), [255, 255, 255]),  # fully transparent → white background
    ("LA", (0, 0), [255, 255, 255]),
    ("I;16", 65535, [255, 255, 255]),
    ("I;16", 32896, [128, 128, 128]),
])
def test_modes_convert_correctly(mode, colour, expected):
    fmt = "TIFF" if mode in ("CMYK", "I;16") else "PNG"
    out = tensor(image_bytes(Image.new(mode, (8, 8), colour), fmt))
    np.testing.assert_allclose(out[4, 4], expected, atol=1)


def test_palette_with_transparency_and_greyscale_models():
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 255, 0] * 256)
    image.info["transparency"] = 0
    out = tensor(image_bytes(image, "PNG", transparency=0))
    np.testing.assert_allclose(out[0, 0], [255, 255, 255])
    grey = tensor(image_bytes(Image.new("RGB", (8, 8), (255, 255, 255))),
                  Preprocessing(size=(4, 4), channels=1, layout="NCHW", scaling="unit"))
    assert grey.shape == (1, 4, 4) and grey.max() == pytest.approx(1.0)


def test_animated_gif_uses_the_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    buffer = image_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert tensor(buffer)[0, 0].argmax() == 0


def test_exif_orientation_rotates_before_resizing():
    stored = Image.new("RGB", (20, 10), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 10, 10))  # red on the left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # viewer rotates 90° clockwise: red ends up on top
    out = tensor(image_bytes(stored, "JPEG", exif=exif.tobytes(), quality=95),
                 Preprocessing(size=(10, 20), layout="NHWC", scaling="none"))
    assert out.shape == (20, 10, 3)
    assert out[2, 5].argmax() == 0 and out[17, 5].argmax() == 2


def test_default_decodes_the_whole_jpeg_and_fast_drafts_it():
    """By default a large JPEG is decoded whole and resized with Pillow: exactly Pillow's own
    full decode + resize. ``decode = "fast"`` (DCT-scaled draft) is near it, not equal."""
    photo = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    data = image_bytes(Image.fromarray(photo).resize((1600, 1200)), "JPEG", quality=90)
    full = np.asarray(Image.open(__import__("io").BytesIO(data)).convert("RGB").resize(
        (16, 16), Image.Resampling.BILINEAR), dtype=np.float32)
    exact = tensor(data, Preprocessing(size=(16, 16), layout="NHWC", scaling="none"))
    np.testing.assert_array_equal(exact, full)
    fast = tensor(data, Preprocessing(size=(16, 16), layout="NHWC", scaling="none",
                                      decode="fast"))
    assert 0 < np.abs(fast - full).mean() < 6


def test_shorter_side_resize_then_centre_crop():
    wide = halves((255, 0, 0), (0, 0, 255), (400, 100))  # centre crop sees the middle only
    out = tensor(image_bytes(wide), Preprocessing(size=(10, 10), layout="NHWC",
                                                  scaling="none", resize=10))
    assert out.shape == (10, 10, 3)
    assert out[5, 2].argmax() == 0 and out[5, 8].argmax() == 2


@pytest.mark.parametrize(("size", "region", "box"), [
    ((200, 100), Region(), (0, 0, 200, 100)),
    ((200, 100), Region(50, 50, 0.5), (25, 25, 75, 75)),
    ((200, 100), Region(0, 0, 0.5), (0, 0, 25, 25)),           # clipped at the corner
    ((200, 100), Region(199, 99, 1.0), (149, 49, 200, 100)),
    ((200, 100), Region(None, None, 0.2), (90, 40, 110, 60)),   # centred
    ((200, 100), Region(100, 50, None), (87.5, 37.5, 112.5, 62.5)),  # default 0.25
])
def test_crop_geometry(size, region, box):
    assert crop_box(size, region, 0.0) == pytest.approx(box)


def test_point_outside_the_image():
    with pytest.raises(InvalidInput) as caught:
        crop_box((10, 10), Region(10, 3, 0.5), 0.0)
    assert caught.value.code == "invalid_parameter"


def test_pixel_cap_before_decoding():
    data = image_bytes(Image.new("L", (2000, 2000)), "PNG")
    with pytest.raises(TooLarge) as caught:
        tensor(data, max_pixels=1_000_000)
    assert caught.value.code == "image_too_large"


def test_lying_header_bomb_is_refused_without_allocating():
    # A PNG whose IHDR claims 100000×100000 pixels.
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))
    assert len(data) < 200
    with pytest.raises(TooLarge):
        tensor(data, max_pixels=25_000_000)


@pytest.mark.parametrize(("data", "kind", "code"), [
    (b"", UnsupportedMedia, "unsupported_image_format"),
    (b"GIF89a" + b"\0" * 5, InvalidInput, "image_decode_failed"),
    (b"%PDF-1.4 not an image", UnsupportedMedia, "unsupported_image_format"),
])
def test_broken_inputs_have_stable_codes(data, kind, code):
    with pytest.raises(kind) as caught:
        tensor(data)
    assert caught.value.code == code


def test_truncated_jpeg():
    data = image_bytes(Image.new("RGB", (64, 64), (1, 2, 3)), "JPEG")
    with pytest.raises(InvalidInput) as caught:
        tensor(data[: len(data) // 2])
    assert caught.value.code == "image_decode_failed"
