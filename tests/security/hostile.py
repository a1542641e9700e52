"""Generated hostile images: decompression bombs, lying headers, truncated and polyglot files,
huge dimensions, many frames and odd modes. Each is built in memory in well under a second, and
each file is small; the danger is in what the header promises."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

from ..support import image_bytes


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, rows: int | None = None, mode: int = 0, depth: int = 8,
        extra: bytes = b"") -> bytes:
    """A greyscale PNG declaring ``width``×``height`` with ``rows`` rows of zero pixels actually
    compressed (all of them by default): a few hundred KB can promise gigabytes."""
    rows = height if rows is None else rows
    compressor = zlib.compressobj(9)
    row = b"\0" * (1 + width * max(1, depth // 8))
    data = b"".join(compressor.compress(row) for _ in range(rows)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, depth, mode, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + extra + _chunk(b"IDAT", data)
            + _chunk(b"IEND", b""))


def png_text_bomb() -> bytes:
    """A 1×1 PNG whose compressed text chunk inflates to 200 MB."""
    text = b"Comment\0\0" + zlib.compress(b"\0" * 200_000_000, 9)
    return png(1, 1, extra=_chunk(b"zTXt", text))


def jpeg_with_size(width: int, height: int) -> bytes:
    """A real 16×16 JPEG whose SOF0 header is rewritten to claim ``width``×``height``."""
    data = bytearray(image_bytes(Image.new("RGB", (16, 16), (200, 20, 20)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gif_with_screen(width: int, height: int) -> bytes:
    """A GIF with one 1×1 frame on a ``width``×``height`` logical screen."""
    data = bytearray(image_bytes(Image.new("P", (1, 1)), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


def gif_many_frames(frames: int = 1500, size: int = 32) -> bytes:
    images = [Image.new("L", (size, size), i % 256) for i in range(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, "GIF", save_all=True, append_images=images[1:], duration=10)
    return buffer.getvalue()


def webp_with_size(width: int, height: int) -> bytes:
    """A lossless WebP whose VP8L header is rewritten to claim ``width``×``height``."""
    data = bytearray(image_bytes(Image.new("RGB", (16, 16), (200, 20, 20)), "WEBP",
                                 lossless=True))
    at = data.index(b"VP8L") + 8 + 1  # chunk header, then the 0x2f signature byte
    bits = int.from_bytes(data[at:at + 4], "little")
    bits = (bits & ~0x0FFFFFFF) | (width - 1) | ((height - 1) << 14)
    data[at:at + 4] = bits.to_bytes(4, "little")
    return bytes(data)


def tiff_with_size(width: int, height: int) -> bytes:
    data = bytearray(image_bytes(Image.new("L", (8, 8)), "TIFF"))
    # rewrite the ImageWidth (256) and ImageLength (257) entries of the first IFD
    ifd = struct.unpack("<I", data[4:8])[0]
    count = struct.unpack("<H", data[ifd:ifd + 2])[0]
    for i in range(count):
        at = ifd + 2 + 12 * i
        tag, _kind = struct.unpack("<HH", data[at:at + 4])
        if tag in (256, 257):
            value = width if tag == 256 else height
            data[at + 2:at + 12] = struct.pack("<HII", 4, 1, value)
    return bytes(data)


def tiff_many_pages(pages: int = 500) -> bytes:
    images = [Image.new("RGB", (16, 16), (i % 256, 0, 0)) for i in range(pages)]
    buffer = io.BytesIO()
    images[0].save(buffer, "TIFF", save_all=True, append_images=images[1:])
    return buffer.getvalue()


def bmp_with_size(width: int, height: int) -> bytes:
    data = bytearray(image_bytes(Image.new("RGB", (4, 4), (200, 0, 0)), "BMP"))
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def truncated(fmt: str) -> bytes:
    full = image_bytes(Image.effect_noise((256, 256), 60).convert("RGB"), fmt)
    return full[: len(full) // 2]


def odd_mode(mode: str, fmt: str) -> bytes:
    if mode == "I;16":
        image = Image.new("I;16", (32, 32))
        image.paste(60000, (0, 0, 32, 32))
    elif mode == "F":
        image = Image.new("F", (32, 32), 0.9)
    elif mode == "P":
        image = Image.new("P", (32, 32), 1)
        image.putpalette([0, 0, 0, 250, 10, 10] + [0] * 762)
        return image_bytes(image, fmt, transparency=0)
    else:
        image = Image.new("RGB", (32, 32), (250, 10, 10)).convert(mode)
    return image_bytes(image, fmt)
