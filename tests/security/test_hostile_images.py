"""Hostile images against a live server: each gets its 4xx and stable code (or a normal answer
for odd but valid files), and afterwards the server still answers /healthz and a normal
prediction, and the memory of its process tree is back near where it started."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ..support import image_bytes, solid, start_server
from . import hostile as h

RED = solid((250, 10, 10))
MAX_PIXELS = 10_000_000
RSS_SLACK = 150 * 2**20  # allocator caches and one decoded 10 Mpx image per worker at most

CASES = {
    # decompression bombs: the header promises far more pixels than allowed
    "png 12000x12000 of zeros (140 KB)": (lambda: h.png(12000, 12000), 413, "image_too_large"),
    "jpeg claiming 60000x60000": (lambda: h.jpeg_with_size(60000, 60000), 413, "image_too_large"),
    "gif screen 65535x65535": (lambda: h.gif_with_screen(65535, 65535), 413, "image_too_large"),
    "webp claiming 16383x16383": (lambda: h.webp_with_size(16383, 16383), 413,
                                  "image_too_large"),
    "tiff claiming 100000x100000": (lambda: h.tiff_with_size(100000, 100000), 413,
                                    "image_too_large"),
    "bmp claiming 50000x50000": (lambda: h.bmp_with_size(50000, 50000), 413, "image_too_large"),
    "png text chunk inflating to 200 MB": (h.png_text_bomb, 422, "image_decode_failed"),
    # lying headers within the pixel limit: libpng, libjpeg and libwebp end the stream early
    # and fill the rest, so these decode (bounded by the pixel limit) and get an answer
    "png claiming 3000x3000 with 10 rows": (lambda: h.png(3000, 3000, rows=10), 200,
                                            "red|green|blue"),
    "jpeg claiming 3000x3000": (lambda: h.jpeg_with_size(3000, 3000), 200, "red|green|blue"),
    "webp claiming 3000x3000": (lambda: h.webp_with_size(3000, 3000), 200, "red|green|blue"),
    # truncated
    **{f"truncated {fmt}": ((lambda fmt=fmt: h.truncated(fmt)), 422, "image_decode_failed")
       for fmt in ("JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP")},
    # not images, or formats outside the allowlist
    "empty body": (lambda: b"", 422, "invalid_parameter"),
    "random bytes": (lambda: os.urandom(4096), 415, "unsupported_image_format"),
    "svg": (lambda: b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
            415, "unsupported_image_format"),
    "postscript (would run ghostscript)": (lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: "
                                           b"0 0 10 10\nshowpage\n", 415,
                                           "unsupported_image_format"),
    "ico": (lambda: image_bytes(h.Image.new("RGB", (16, 16)), "ICO"), 415,
            "unsupported_image_format"),
    "gif/javascript polyglot": (lambda: b"GIF89a/*\x01\x00\x01\x00\x00\x00\x00*/=alert(1);//",
                                422, "image_decode_failed"),
    # valid but odd: the first frame or page only, unusual modes, appended junk
    "gif with 1500 frames": (h.gif_many_frames, 200, "red|green|blue"),
    "tiff with 500 pages": (h.tiff_many_pages, 200, "red"),
    "png with a zip appended": (lambda: RED + b"PK\x03\x04" + os.urandom(2000), 200, "red"),
    "jpeg with html in a comment": (lambda: image_bytes(h.Image.new("RGB", (32, 32),
                                                                    (250, 10, 10)), "JPEG",
                                                        comment=b"<script>alert(1)</script>"),
                                    200, "red"),
    "png 1x10000000": (lambda: h.png(10_000_000, 1), 200, "red|green|blue"),
    **{f"{mode} {fmt}": ((lambda mode=mode, fmt=fmt: h.odd_mode(mode, fmt)), 200,
                         "red|green|blue")
       for mode, fmt in (("CMYK", "JPEG"), ("I;16", "PNG"), ("1", "PNG"), ("LA", "PNG"),
                         ("P", "PNG"), ("F", "TIFF"), ("RGBA", "WEBP"), ("YCbCr", "JPEG"))},
}


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += int(next(line.split()[1] for line in status.splitlines()
                              if line.startswith("VmRSS:"))) * 1024
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except (OSError, StopIteration):
            continue
        todo.extend(int(c) for c in children)
    return total


@pytest.fixture(scope="module")
def target(rgb_repo, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    server = start_server([str(rgb_repo), "--max-pixels", str(MAX_PIXELS), "--replicas", "2"],
                          tmp)
    for _ in range(20):  # warm both workers and the allocator before taking the baseline
        assert predict(server, RED).status_code == 200
    server.baseline = tree_rss(server.process.pid)  # type: ignore[attr-defined]
    yield server
    assert server.stop() == 0


def predict(server, data: bytes):
    return server.client.post("/api/models/rgb/predict", content=data,
                              headers={"Content-Type": "application/octet-stream"})


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_image(target, name):
    make, status, expected = CASES[name]
    response = predict(target, make())
    assert response.status_code == status, response.text
    if status == 200:
        assert response.json()["predictions"][0]["label"] in expected.split("|")
    else:
        error = response.json()["error"]
        assert error["code"] == expected
        assert "Traceback" not in error["message"] and "/" not in error["message"]
    assert target.client.get("/healthz").status_code == 200
    normal = predict(target, RED)
    assert normal.status_code == 200 and normal.json()["predictions"][0]["label"] == "red"
    grown = tree_rss(target.process.pid) - target.baseline
    assert grown < RSS_SLACK, f"process tree grew by {grown / 2**20:.0f} MiB"
    assert len(target.worker_pids()) == 2  # no worker died on the way
