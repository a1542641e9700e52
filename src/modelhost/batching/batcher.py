"""A dynamic batcher per model: bounded queue, max batch size, optional max delay, deadlines.

A batch is formed the moment a worker has room for one: everything queued by then (up to
``max_batch_size``) goes together. So an idle server adds no delay, and a busy one batches
exactly as much as the load gives it. ``max_delay_ms`` can make it wait a little longer for a
fuller batch; on the CPUs measured here batching does not pay (DESIGN.md), so it defaults to 0.
Expired and abandoned requests are dropped before a batch is formed, never sent to the model.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ModelhostError, Timeout, Unavailable, from_code
from ..types import Region
from ..workers.messages import RawTensor
from ..workers.pool import ModelPool, Worker


@dataclass
class BatchOutput:
    """One request's row of a batch result, with where its time went."""

    row: np.ndarray
    queue_ms: float
    decode_ms: float
    inference_ms: float
    batch_size: int
    sha256: str = ""  # the input's digest, computed by the worker


@dataclass
class _Item:
    data: bytes
    region: Region | RawTensor
    deadline: float
    enqueued: float
    future: asyncio.Future[BatchOutput] = field(repr=False)


class Batcher:
    """Queues single images and sends them to ``pool`` in batches."""

    def __init__(self, pool: ModelPool, *, max_batch_size: int, max_delay_ms: float,
                 max_queue: int) -> None:
        self._pool = pool
        self._max_batch = max_batch_size
        self._max_delay = max_delay_ms / 1000.0
        self._max_queue = max_queue
        self._items: collections.deque[_Item] = collections.deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def depth(self) -> int:
        return len(self._items)

    @property
    def half_full(self) -> bool:
        """Half the queue is taken: shadow traffic is dropped from here on, so that it never
        takes the places answered requests need."""
        return len(self._items) * 2 >= self._max_queue

    @property
    def layout(self) -> dict[str, float]:
        """The batching settings in force (reported by the model listings)."""
        return {"max_batch_size": self._max_batch, "max_delay_ms": self._max_delay * 1000.0}

    def resize(self, max_batch_size: int) -> None:
        """Take the largest batch the tuner chose (before :meth:`start`)."""
        self._max_batch = max_batch_size

    def start(self) -> None:
        self._task = asyncio.create_task(self._dispatch_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def refuse_poison(self, data: bytes) -> None:
        """422 ``input_quarantined`` for an input that stopped the model's workers before
        (the pool keeps the list; the request path only ever talks to the batcher)."""
        self._pool.refuse_poison(data)

    async def submit(self, data: bytes, region: Region | RawTensor, deadline: float) -> BatchOutput:
        """Queue one encoded image and wait for its output; 503 when the queue is full."""
        if len(self._items) >= self._max_queue:
            raise Unavailable("the server is at capacity; try again shortly", "overloaded",
                              retry_after=1.0)
        loop = asyncio.get_running_loop()
        item = _Item(data, region, deadline, loop.time(), loop.create_future())
        self._items.append(item)
        self._wake.set()
        try:
            return await item.future
        finally:
            if not item.future.done():
                item.future.cancel()  # abandoned (deadline, disconnect): skip it

    async def _dispatch_forever(self) -> None:
        while True:
            if not self._items:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                worker = await self._pool.acquire()
            except ModelhostError as exc:
                self._fail_all(exc)
                continue
            if self._max_delay and len(self._items) < self._max_batch:
                await self._wait_for_more()
            items = self._take()
            if items:
                self._send(worker, items)

    async def _wait_for_more(self) -> None:
        loop = asyncio.get_running_loop()
        until = loop.time() + self._max_delay
        while len(self._items) < self._max_batch and (left := until - loop.time()) > 0:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), left)

    def _take(self) -> list[_Item]:
        """Pop up to a batch of live items; fail the expired ones now."""
        now = asyncio.get_running_loop().time()
        items: list[_Item] = []
        while self._items and len(items) < self._max_batch:
            item = self._items.popleft()
            if item.future.done():
                continue
            if item.deadline <= now:
                item.future.set_exception(Timeout("the request ran out of time while queued"))
                continue
            items.append(item)
        return items

    def _send(self, worker: Worker, items: list[_Item]) -> None:
        images = [(item.data, item.region) for item in items]
        sent = asyncio.get_running_loop().time()
        future = self._pool.submit(worker, images, max(item.deadline for item in items))
        future.add_done_callback(lambda done: self._deliver(items, sent, done))

    @staticmethod
    def _deliver(items: list[_Item], sent: float, done: asyncio.Future[Any]) -> None:
        if done.cancelled():
            error: BaseException | None = Unavailable("the server is shutting down", "draining")
        else:
            error = done.exception()
        if error is not None:
            for item in items:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        result, output = done.result()
        rows = dict(zip(result.ok, output, strict=True))
        failures = {index: from_code(code, message) for index, code, message in result.errors}
        for index, item in enumerate(items):
            if item.future.done():
                continue
            if index in failures:
                item.future.set_exception(failures[index])
                continue
            item.future.set_result(BatchOutput(
                rows[index], (sent - item.enqueued) * 1000, result.decode_ms[index],
                result.inference_ms, len(items), result.sha256[index],
            ))

    def _fail_all(self, error: ModelhostError) -> None:
        while self._items:
            item = self._items.popleft()
            if not item.future.done():
                item.future.set_exception(error)

