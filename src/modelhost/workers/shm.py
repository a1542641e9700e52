"""Shared-memory slots for large batch payloads.

Measured round trips to a worker process here (``benchmarks/ipc.py``): 972 bytes take 0.06 ms
through the socket and 0.12 ms through shared memory; 600 KB 0.36 vs 0.26 ms; 4.8 MB 16.8 vs
0.8 ms. So payloads of at least :data:`SHM_MIN_BYTES` travel in a shared-memory slot and only a
small header goes through the socket; smaller ones stay inline.

A slot belongs to one batch from submit until its result (or the worker's death), so the
server never writes into memory the worker is reading. Each worker needs at most as many slots
as batches it can have in flight.
"""

from __future__ import annotations

import collections
import contextlib
from multiprocessing import resource_tracker, shared_memory

SHM_MIN_BYTES = 128 * 1024


class SlotPool:
    """Server side: reusable shared-memory blocks for one worker."""

    def __init__(self) -> None:
        self._free: list[shared_memory.SharedMemory] = []
        self._all: list[shared_memory.SharedMemory] = []

    def write(self, parts: list[bytes], size: int) -> shared_memory.SharedMemory:
        """Copy ``parts`` (``size`` bytes in all) into a free slot big enough for them."""
        slot = next((s for s in self._free if s.size >= size), None)
        if slot is None:
            if self._free:  # too small for this payload: replace it
                self._discard(self._free.pop())
            slot = shared_memory.SharedMemory(create=True, size=size)
            self._all.append(slot)
        else:
            self._free.remove(slot)
        offset = 0
        buf = slot.buf
        assert buf is not None  # None only once closed
        for part in parts:
            buf[offset : offset + len(part)] = part
            offset += len(part)
        return slot

    def release(self, slot: shared_memory.SharedMemory) -> None:
        self._free.append(slot)

    def close(self) -> None:
        for slot in list(self._all):
            self._discard(slot)
        self._free.clear()

    def _discard(self, slot: shared_memory.SharedMemory) -> None:
        self._all.remove(slot)
        slot.close()
        slot.unlink()


class Attachments:
    """Worker side: views of the server's slots, attached once and kept (a few at most)."""

    def __init__(self, keep: int = 4) -> None:
        self._open: collections.OrderedDict[str, shared_memory.SharedMemory] = (
            collections.OrderedDict()
        )
        self._keep = keep

    def view(self, name: str, size: int) -> memoryview:
        slot = self._open.get(name)
        if slot is None:
            slot = shared_memory.SharedMemory(name)
            # The server owns and unlinks the block; without this the worker's resource
            # tracker would unlink it too, or warn about a "leak" at exit.
            resource_tracker.unregister(slot._name, "shared_memory")  # type: ignore[attr-defined]
            self._open[name] = slot
            while len(self._open) > self._keep:
                with contextlib.suppress(BufferError):  # a view of it may still be alive
                    self._open.popitem(last=False)[1].close()
        self._open.move_to_end(name)
        assert slot.buf is not None  # None only once closed
        return slot.buf[:size]
