"""Journal: numbered, append-only JSON-lines files that hold records until the database has
them.

Every prediction record is appended here on the request path (one ``os.write`` into the page
cache: a few microseconds, and it survives the process being killed); the prediction log moves
whole closed segments into the database and deletes them. While the database is away the
segments simply stay — they are the spool — and are fsynced; on start-up any left from an
earlier run are replayed. The store's writes are idempotent, so a segment replayed twice (a
crash between commit and delete) stores nothing twice.
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

import orjson

from ..errors import StartupError

_PREFIX, _SUFFIX = "segment-", ".jsonl"


class JournalBusy(StartupError):
    """Another live server holds this journal folder."""


class Journal:
    """The open segment takes appends; closed segments wait for the database, oldest first."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()  # appends come from the loop and from feedback threads
        self._fd = -1
        self._number = 0
        self._written = 0  # records in the open segment
        self._owner = -1  # the lock file: one server per journal folder

    def open(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._owner = os.open(self.folder / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._owner)
            raise JournalBusy(f"{self.folder} is used by another modelhost server; give each "
                              "server its own --journal-dir") from None
        numbers = [number_of(p) for p in self.closed()]
        self._number = max(numbers, default=0)
        self._open_next()

    def close(self) -> None:
        """Close the open segment (it stays on disk for the next start if not yet stored)."""
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
                if not self._written:
                    self._path(self._number).unlink(missing_ok=True)
            if self._owner >= 0:
                os.close(self._owner)  # releases the lock
                self._owner = -1

    def append(self, record: dict, *, durable: bool = False) -> int:
        """Add a record; returns the number of the segment it went to. ``durable`` fsyncs
        before returning (feedback: the answer promises it is on disk)."""
        line = orjson.dumps(record) + b"\n"
        with self._lock:
            os.write(self._fd, line)
            self._written += 1
            number = self._number
            if not durable:
                return number
            fd = os.dup(self._fd)  # fsync outside the lock: appends on the loop never wait
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return number

    def rotate(self) -> None:
        """Close the open segment so that it can be stored; later appends go to a new one."""
        with self._lock:
            if not self._written:
                return
            os.close(self._fd)
            self._open_next()

    def closed(self) -> list[Path]:
        """Segments waiting for the database, oldest first (the open one excluded)."""
        current = self._path(self._number) if self._fd >= 0 else None
        found = [p for p in self.folder.glob(f"{_PREFIX}*{_SUFFIX}") if p != current]
        return sorted(found, key=number_of)

    def _open_next(self) -> None:
        self._number += 1
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        self._fd = os.open(self._path(self._number), flags, 0o600)
        self._written = 0

    def _path(self, number: int) -> Path:
        return self.folder / f"{_PREFIX}{number:012d}{_SUFFIX}"


def claim(base: Path, slots: int = 64) -> Journal:
    """Open the first journal folder under ``base`` that no live server holds, so that
    several servers on one machine share a database without sharing a journal; a new server
    takes over (and stores) what a dead one left in its folder."""
    for slot in range(slots):
        journal = Journal(base / str(slot))
        try:
            journal.open()
        except JournalBusy:
            continue
        return journal
    raise JournalBusy(f"all {slots} journal folders under {base} are in use")


def number_of(path: Path) -> int:
    return int(path.name[len(_PREFIX):-len(_SUFFIX)])


def read(path: Path) -> list[dict]:
    """A segment's records. A torn last line (the process died mid-write, before anyone was
    answered for it) is skipped."""
    records = []
    for line in path.read_bytes().splitlines():
        try:
            records.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            continue
    return records


def sync(path: Path) -> None:
    """Make a waiting segment durable (the database is away; it is the spool now)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
