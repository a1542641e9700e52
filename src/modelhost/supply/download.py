"""Fetch a model file given by URL on the command line (``modelhost serve https://.../m.onnx
--sha256 HEX``): once, into the cache, verified before use.

The operator names the URL and its SHA-256; nothing here is reachable from an HTTP request (a
model's location never comes from a client). The file is streamed to a temporary name while
hashed, and only a file whose hash matches is moved into ``cache_dir/downloads/<sha256>/``; a
later start finds it there, checks the hash again and downloads nothing.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from ..errors import StartupError

_HEX = re.compile(r"^[0-9a-f]{64}$")


class DownloadError(StartupError):
    """The model could not be fetched, or its bytes are not the ones named by ``--sha256``."""


def is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


def fetch_model(url: str, sha256: str | None, cache_dir: Path, timeout: float = 60) -> Path:
    """The local path of ``url``'s file, downloading it unless the cache holds it."""
    if sha256 is None:
        raise DownloadError(f"{url}: a model URL needs --sha256 (the file's SHA-256, in hex), "
                            "so that what is served is what you meant")
    sha256 = sha256.strip().lower()
    if not _HEX.match(sha256):
        raise DownloadError(f"--sha256 {sha256!r}: expected 64 hexadecimal digits")
    name = _file_name(url)
    target = cache_dir / "downloads" / sha256 / name
    if target.is_file() and file_sha256(target) == sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=".download-",
                                     delete=False) as handle:
        partial = Path(handle.name)
        try:
            actual = _stream(url, handle, timeout)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    if actual != sha256:
        partial.unlink(missing_ok=True)
        raise DownloadError(f"{url}: SHA-256 mismatch: expected {sha256}, downloaded {actual}; "
                            "the file was not used")
    partial.replace(target)
    return target


def file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _file_name(url: str) -> str:
    name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("._")
    if not cleaned:
        raise DownloadError(f"{url}: the URL names no file")
    return cleaned


def _stream(url: str, handle, timeout: float) -> str:
    """Write the response body to ``handle`` with a progress bar; its SHA-256."""
    digest = hashlib.sha256()
    columns = (TextColumn("downloading {task.description}"), BarColumn(), DownloadColumn(),
               TransferSpeedColumn(), TimeRemainingColumn())
    try:
        with httpx.stream("GET", url, follow_redirects=True, timeout=timeout) as response, \
                Progress(*columns, transient=True) as progress:
            if response.status_code != 200:
                raise DownloadError(f"{url}: HTTP {response.status_code}")
            size = int(response.headers.get("content-length", 0)) or None
            task = progress.add_task(_file_name(url), total=size)
            for chunk in response.iter_bytes(1 << 16):
                handle.write(chunk)
                digest.update(chunk)
                progress.advance(task, len(chunk))
    except httpx.HTTPError as exc:
        raise DownloadError(f"{url}: download failed ({type(exc).__name__}: {exc})") from None
    return digest.hexdigest()
