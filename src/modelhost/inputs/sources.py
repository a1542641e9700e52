"""Where an image's bytes come from: the request itself, a URL, or a file under a server root.

The HTTP layer decides which kind of source a request names; this module fetches the bytes
under the configured guards. A refused server path is always ``not_found`` — whether the file
is outside the root, missing, a directory, a device or a FIFO — so that nothing reveals what
exists on the server.
"""

from __future__ import annotations

import asyncio
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidInput, NotFound, TooLarge
from .urlfetch import UrlFetcher


@dataclass(frozen=True)
class Upload:
    """Bytes sent in the request (multipart, raw body or base64)."""

    data: bytes


@dataclass(frozen=True)
class RemoteUrl:
    url: str


@dataclass(frozen=True)
class ServerPath:
    path: str


Source = Upload | RemoteUrl | ServerPath


class SourceReader:
    """Reads any :data:`Source` into bytes, enforcing the URL and path policies."""

    def __init__(
        self, *, path_root: Path | None, fetcher: UrlFetcher | None, max_bytes: int
    ) -> None:
        self._root = path_root.resolve(strict=True) if path_root else None
        self._fetcher = fetcher
        self._max_bytes = max_bytes

    async def read(self, source: Source) -> bytes:
        match source:
            case Upload(data):
                return data
            case RemoteUrl(url):
                if self._fetcher is None:
                    raise InvalidInput(
                        "fetching images by URL is disabled on this server", "url_not_allowed"
                    )
                return await self._fetcher.fetch(url)
            case ServerPath(path):
                return await asyncio.to_thread(self._read_path, path)
        raise InvalidInput("no image given", "invalid_parameter")

    def _read_path(self, name: str) -> bytes:
        if self._root is None:
            raise NotFound("no such image")
        path = resolve_under_root(self._root, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as exc:
            raise NotFound("no such image") from exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # directory, FIFO, device, socket
            os.close(fd)
            raise NotFound("no such image")
        with os.fdopen(fd, "rb") as handle:
            data = handle.read(self._max_bytes + 1)
        if len(data) > self._max_bytes:
            raise TooLarge("the file is larger than the body limit", "body_too_large")
        return data

    async def aclose(self) -> None:
        if self._fetcher is not None:
            await self._fetcher.aclose()


def resolve_under_root(root: Path, name: str) -> Path:
    """The real path of ``name`` relative to ``root``, or NotFound if it leaves the root.

    Symlinks are resolved first, so a link inside the root that points outside is refused too.
    """
    if not name or "\x00" in name or name.startswith(("/", "\\")) or len(name) > 4096:
        raise NotFound("no such image")
    try:
        path = (root / name).resolve(strict=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise NotFound("no such image") from exc
    if not path.is_relative_to(root):
        raise NotFound("no such image")
    return path
