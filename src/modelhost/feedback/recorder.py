"""PredictionLog: records every prediction and every feedback without slowing the request
path and without losing anything that was answered.

    request path ──append──▶ journal segment (page cache, µs) ──▶ response
    background task, every 0.2 s: rotate the journal, store closed segments (a thread),
                                  delete them; database away → keep them, fsync, retry later
    feedback: append + fsync, then flush: stored → 200; still in the journal → 202

Order is kept because everything goes through one journal and segments are stored oldest
first; a feedback therefore never reaches the database before its prediction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from ..errors import InternalError, NotFound, Unavailable
from ..types import Prediction, Region
from . import journal as journal_files
from .journal import Journal
from .store import Store, StoreUnavailable

_T = TypeVar("_T")

log = logging.getLogger("modelhost.feedback")

FLUSH_INTERVAL = 0.2  # seconds between batched writes
RETRY_MIN, RETRY_MAX = 0.5, 5.0  # back-off while the database is away
RECENT = 50_000  # predictions remembered in memory for feedback lookups
UNFLUSHED_LOOKS = 5  # database look-ups, FLUSH_INTERVAL apart, before an unknown id is a 404
RETENTION_EVERY = 3600.0


@dataclass(frozen=True)
class Logged:
    """What a feedback needs to know about the prediction it judges."""

    model: str
    version: str
    labels: tuple[str, ...]  # the top-k labels the user saw, best first

    @property
    def top1(self) -> str | None:
        return self.labels[0] if self.labels else None


class PredictionLog:
    """Buffers records in the journal and moves them into the store in batches."""

    def __init__(self, store: Store, journal: Journal, *, images: Path | None = None,
                 retention_days: float | None = None) -> None:
        self.store = store
        self.journal = journal
        self._images = images
        self._retention = retention_days
        self._recent: OrderedDict[str, Logged] = OrderedDict()
        self._pending_images: dict[str, bytes] = {}
        self._flushing = asyncio.Lock()
        self._stored_through = 0  # every segment up to this number is in the database
        self._rejected: set[int] = set()  # ... except these, which it refused
        self._migrated = False
        self._migrating = threading.Lock()  # a lookup and the writer may both be first
        self.available = True
        self.stored_records = 0
        self.last_error: str | None = None
        self._retry_at = 0.0
        self._retry_wait = RETRY_MIN
        self._task: asyncio.Task | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Bring the schema up to date (if the database answers), then start the writer; it
        first stores what an earlier run left in the journal."""
        where = self.store.describe()
        log.info("prediction log in %s", where, extra={"fields": {
            "db": where, "journal": str(self.journal.folder)}})
        try:
            await asyncio.to_thread(self._ensure_schema)
        except StoreUnavailable as exc:
            self._went_away(str(exc))
        self._task = asyncio.create_task(self._run(), name="prediction-log")

    async def stop(self) -> None:
        """Store what is buffered (or leave it, synced, in the journal for the next start)."""
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._retry_at = 0.0
        await self.flush()
        await asyncio.to_thread(self._sync_closed)
        self.journal.close()
        await asyncio.to_thread(self.store.close)

    def state(self) -> dict:
        return {"database": "ok" if self.available else "unavailable",
                "waiting_segments": len(self.journal.closed()) if self._task else 0,
                "stored_records": self.stored_records,
                **({"error": self.last_error} if not self.available else {})}

    # -- the request path -------------------------------------------------------------------

    def record(self, p: Prediction, *, data: bytes, sha256: str, region: Region,
               client: str | None, request_id: str, bench: bool = False,
               shadow_of: str | None = None) -> None:
        """Log one prediction: one journal append, nothing waits for the database.
        ``shadow_of``: this is a shadow version's prediction for that answered one."""
        labels = [lab.label for lab in p.labels]
        t = p.timings
        self.journal.append({
            "kind": "prediction", "id": p.id, "time": time.time(), "model": p.model,
            "version": p.version, "sha256": sha256, "x": region.x, "y": region.y,
            "crop": region.crop, "labels": labels,
            "scores": [round(lab.score, 6) for lab in p.labels],
            "decode_ms": t.decode, "queue_ms": t.queue, "inference_ms": t.inference,
            "total_ms": t.total, "batch_size": p.batch_size, "client": client,
            "request_id": request_id, **({"bench": True} if bench else {}),
            **({"shadow_of": shadow_of} if shadow_of else {}),
        })
        if shadow_of is None:  # a shadow's id is never returned: no feedback can name it
            self._remember(p.id, Logged(p.model, p.version, tuple(labels)))
        if self._images is not None:
            self._pending_images[sha256] = data

    async def lookup(self, prediction_id: str) -> Logged:
        """The logged prediction; 404 if unknown, 503 if only the database could tell."""
        found = self._recent.get(prediction_id)
        if found is not None:
            return found
        row = await self._find_row(prediction_id)
        # Instances behind a balancer share the database: a prediction made by another one
        # reaches it within that instance's flush interval, so look again before a 404.
        for _ in range(UNFLUSHED_LOOKS):
            if row is not None:
                break
            await asyncio.sleep(FLUSH_INTERVAL)
            row = await self._find_row(prediction_id)
        if row is None:
            raise NotFound(f"no prediction with id {prediction_id!r}")
        return Logged(row["model"], row["version"], tuple(row["labels"]))

    async def _find_row(self, prediction_id: str) -> dict | None:
        try:
            return await asyncio.to_thread(self._find, prediction_id)
        except StoreUnavailable:
            raise Unavailable("the prediction log database is unavailable", "db_unavailable",
                              retry_after=5.0) from None

    async def feedback(self, prediction_id: str, label: str | None, correct: bool,
                       client: str | None, *, wait: float = 5.0) -> bool:
        """Record a feedback durably; True when it is in the database, False when it waits in
        the (fsynced) journal because the database is away or slow."""
        record = {"kind": "feedback", "prediction_id": prediction_id, "label": label,
                  "correct": correct, "time": time.time(), "client": client}
        try:
            segment = await asyncio.to_thread(self.journal.append, record, durable=True)
        except OSError as exc:
            raise Unavailable("feedback could not be stored", "db_unavailable",
                              retry_after=5.0) from exc
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.flush()), wait)
        if segment in self._rejected:
            raise InternalError("the database refused the feedback")
        return self._stored_through >= segment

    async def record_routing(self, change: dict) -> None:
        """Store a run-time routing change now (not through the journal: the caller changes
        routing only once it is stored); 503 ``db_unavailable`` when it cannot be."""
        await self._in_store(self.store.record_routing, change)

    async def routing_history(self, model: str) -> list[dict]:
        """The model's routing changes, newest first."""
        return await self._in_store(self.store.routing_history, model)

    async def _in_store(self, function: Callable[..., _T], *args: Any) -> _T:
        def run() -> _T:
            self._ensure_schema()
            return function(*args)

        try:
            return await asyncio.to_thread(run)
        except StoreUnavailable:
            raise Unavailable("the prediction log database is unavailable", "db_unavailable",
                              retry_after=5.0) from None

    # -- the writer -------------------------------------------------------------------------

    async def flush(self) -> None:
        """Store every closed segment, oldest first (unless the database is backing off)."""
        async with self._flushing:
            if not self.available and time.monotonic() < self._retry_at:
                return
            self.journal.rotate()
            segments = self.journal.closed()
            images, self._pending_images = self._pending_images, {}
            if images:
                await asyncio.to_thread(self._save_images, images)
            if not segments:
                return
            try:
                await asyncio.to_thread(self._store_segments, segments)
            except StoreUnavailable as exc:
                self._went_away(str(exc))
                await asyncio.to_thread(self._sync_closed)
                return
            if not self.available:
                log.info("prediction log database is back; the journal is stored",
                         extra={"fields": {"db": self.store.describe()}})
            self.available, self.last_error, self._retry_wait = True, None, RETRY_MIN

    async def _run(self) -> None:
        next_retention = time.monotonic()
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            try:
                await self.flush()
                if self._retention and self.available and time.monotonic() >= next_retention:
                    next_retention = time.monotonic() + RETENTION_EVERY
                    await self.apply_retention()
            except Exception:  # the writer must outlive any one bad batch
                log.exception("prediction log writer failed; retrying")

    async def apply_retention(self) -> int:
        assert self._retention is not None
        cutoff = datetime.now(UTC) - timedelta(days=self._retention)
        deleted = await asyncio.to_thread(self.store.delete_before, cutoff)
        if deleted:
            log.info("retention: deleted %d predictions older than %s", deleted,
                     cutoff.isoformat(), extra={"fields": {"deleted": deleted}})
        return deleted

    def _store_segments(self, segments: list[Path]) -> None:
        """(thread) Store each segment in its own transaction, then delete it."""
        self._ensure_schema()
        for path in segments:
            records = journal_files.read(path)
            try:
                self.store.write(records)
            except StoreUnavailable:
                raise
            except Exception:
                # Not an outage but records the database refuses: keep them for a person to
                # look at, and go on with the rest.
                kept = path.with_name(f"rejected-{path.name}")
                path.rename(kept)
                self._rejected.add(journal_files.number_of(path))
                log.exception("the database refused %d records; kept in %s", len(records), kept)
            else:
                path.unlink()
                self.stored_records += len(records)
            self._stored_through = journal_files.number_of(path)

    def _ensure_schema(self) -> None:
        """(thread) Migrations run once per start, before the first read or write."""
        with self._migrating:
            if not self._migrated:
                self.store.migrate()
                self._migrated = True

    def _find(self, prediction_id: str) -> dict | None:
        self._ensure_schema()
        return self.store.prediction(prediction_id)

    def _went_away(self, reason: str) -> None:
        if self.available:
            log.error("prediction log database unavailable; keeping records in the journal",
                      extra={"fields": {"db": self.store.describe(), "error": reason}})
        self.available, self.last_error = False, reason
        self._retry_at = time.monotonic() + self._retry_wait
        self._retry_wait = min(self._retry_wait * 2, RETRY_MAX)

    def _sync_closed(self) -> None:
        for path in self.journal.closed():
            with contextlib.suppress(FileNotFoundError):
                journal_files.sync(path)

    def _save_images(self, images: dict[str, bytes]) -> None:
        assert self._images is not None
        for sha, data in images.items():
            target = self._images / sha[:2] / sha
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)

    def _remember(self, prediction_id: str, logged: Logged) -> None:
        self._recent[prediction_id] = logged
        if len(self._recent) > RECENT:
            self._recent.popitem(last=False)
