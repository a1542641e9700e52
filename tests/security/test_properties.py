"""Property-based tests (hypothesis): whatever bytes, numbers or bodies come in, the decoder,
the crop arithmetic and the request parsers either succeed with a sane result or raise a
ModelhostError with a 4xx status, never anything else."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image
from starlette.requests import Request

from modelhost.errors import ModelhostError
from modelhost.http.parse import deadline_for, read_predict_request
from modelhost.inputs.images import check, crop_box, to_tensor
from modelhost.predictor import PredictRequest
from modelhost.types import Preprocessing, Region

PREP = Preprocessing(size=(9, 9), scaling="unit")
MAX_PIXELS = 1_000_000
FAST = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def seed_images() -> list[bytes]:
    image = Image.effect_noise((40, 30), 50).convert("RGB")
    out = []
    for fmt, options in (("PNG", {}), ("JPEG", {}), ("GIF", {}), ("WEBP", {}), ("BMP", {}),
                         ("TIFF", {}), ("JPEG", {"exif": _rotated_exif()})):
        buffer = io.BytesIO()
        image.save(buffer, fmt, **options)
        out.append(buffer.getvalue())
    return out


def _rotated_exif() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return exif.tobytes()


SEEDS = seed_images()


def decode(data: bytes, region: Region = Region()) -> np.ndarray | None:
    """The decoder's contract: a finite (3, 9, 9) tensor, or a 4xx ModelhostError."""
    try:
        check(data, region, 0.0, MAX_PIXELS)
        tensor = to_tensor(data, PREP, region, MAX_PIXELS)
    except ModelhostError as exc:
        assert 400 <= exc.status < 500, (exc.status, exc.code)
        return None
    assert tensor.shape == (3, 9, 9) and tensor.dtype == np.float32
    assert np.isfinite(tensor).all() and tensor.min() >= 0 and tensor.max() <= 1
    return tensor


@FAST
@given(st.binary(max_size=2048))
def test_arbitrary_bytes(data):
    decode(data)


@FAST
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)),
                                         min_size=1, max_size=8),
       st.integers(0, 10**6))
def test_corrupted_real_images(seed, flips, cut):
    data = bytearray(seed)
    for at, value in flips:
        data[at % len(data)] = value
    decode(bytes(data[: max(1, cut % (len(data) + 1))]))


@FAST
@given(st.integers(1, 80), st.integers(1, 80),
       st.sampled_from(["RGB", "L", "RGBA", "P", "1", "LA", "CMYK", "I;16", "I", "F"]),
       st.sampled_from(["PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF"]),
       st.floats(0, 1), st.floats(0, 1), st.none() | st.floats(0.01, 1))
def test_valid_images_of_any_size_and_mode_decode(width, height, mode, fmt, fx, fy, crop):
    image = Image.linear_gradient("L").resize((width, height)).convert(mode) if mode not in (
        "I;16",) else Image.new("I;16", (width, height), 1234)
    buffer = io.BytesIO()
    try:
        image.save(buffer, fmt)
    except (OSError, ValueError, KeyError):
        assume(False)  # this format cannot store this mode
    region = Region(min(fx * width, width - 0.5), min(fy * height, height - 0.5), crop)
    assert decode(buffer.getvalue(), region) is not None


@settings(max_examples=500, deadline=None)
@given(st.integers(1, 100_000), st.integers(1, 100_000),
       st.none() | st.floats(-1e9, 1e9, allow_nan=False), st.none() | st.floats(-1e9, 1e9),
       st.none() | st.floats(0.0001, 1), st.floats(0, 1))
def test_crop_box_stays_inside_and_contains_the_point(width, height, x, y, crop, default):
    region = Region(x, y, crop)
    try:
        left, top, right, bottom = crop_box((width, height), region, default)
    except ModelhostError as exc:
        assert exc.code == "invalid_parameter"
        px = width / 2 if x is None else x
        py = height / 2 if y is None else y
        assert not (0 <= px < width and 0 <= py < height)
        return
    assert 0 <= left < right and 0 <= top < bottom
    assert right <= max(width, left + 1) and bottom <= max(height, top + 1)
    assert right - left >= 1 - 1e-9 and bottom - top >= 1 - 1e-9
    if x is not None and y is not None:
        assert left <= x <= right and top <= y <= bottom
        side = max((crop or default or 0.25) * min(width, height), 1.0)
        assert right - left <= side + 1 and bottom - top <= side + 1


def request_for(body: bytes, content_type: str, query: bytes = b"",
                headers: list[tuple[bytes, bytes]] | None = None) -> Request:
    chunks = [body[i:i + 1000] for i in range(0, len(body), 1000)] or [b""]

    async def receive():
        chunk = chunks.pop(0) if chunks else b""
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    scope = {"type": "http", "method": "POST", "path": "/api/models/m/predict",
             "query_string": query, "headers": [(b"content-type", content_type.encode()),
                                                *(headers or [])]}
    return Request(scope, receive)


def parse(body: bytes, content_type: str, query: bytes = b"") -> PredictRequest | None:
    async def run():
        request = request_for(body, content_type, query)
        return await read_predict_request(request, deadline_for(request, 5.0))

    try:
        return asyncio.run(run())
    except ModelhostError as exc:
        assert 400 <= exc.status < 500, (exc.status, exc.code, exc.message)
        return None


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["url", "path", "image_base64", "top_k", "x", "y",
                                       "crop", "z"]), children, max_size=5),
    max_leaves=20)


@FAST
@given(JSON_VALUES)
def test_any_json_body(value):
    import orjson

    try:
        body = orjson.dumps(value)
    except TypeError:
        assume(False)
    result = parse(body, "application/json")
    if result is not None:
        assert result.top_k is None or 1 <= result.top_k <= 1000


@FAST
@given(st.binary(max_size=3000), st.sampled_from([
    "application/json", "multipart/form-data; boundary=xyz", "multipart/form-data",
    "image/png", "application/octet-stream", "text/plain", "", "multipart/form-data; boundary=",
]), st.binary(max_size=60))
def test_any_body_any_content_type_any_query(body, content_type, query):
    parse(body, content_type, query)


def test_deeply_nested_json_is_400():
    assert parse(b"[" * 100_000 + b"]" * 100_000, "application/json") is None
    assert parse(b'{"url": ' * 5000 + b"1" + b"}" * 5000, "application/json") is None


def test_multipart_with_too_many_parts_or_a_huge_field_is_400():
    many = b"".join(b'--xyz\r\nContent-Disposition: form-data; name="f%d"\r\n\r\nv\r\n' % i
                    for i in range(100)) + b"--xyz--\r\n"
    assert parse(many, "multipart/form-data; boundary=xyz") is None
    huge = (b'--xyz\r\nContent-Disposition: form-data; name="top_k"\r\n\r\n' + b"1" * 200_000
            + b"\r\n--xyz--\r\n")
    assert parse(huge, "multipart/form-data; boundary=xyz") is None


@pytest.mark.parametrize("value", ["abc", "nan", "inf", "-1", "0", "1e400", "", " "])
def test_bad_timeout_headers_are_400(value):
    async def run():
        request = request_for(b"", "image/png", headers=[(b"x-request-timeout", value.encode())])
        return deadline_for(request, 5.0)

    with pytest.raises(ModelhostError) as caught:
        asyncio.run(run())
    assert caught.value.status == 400
