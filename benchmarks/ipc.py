"""Pipe (socket stream) vs shared memory for moving a batch to a worker process, round trip.

The worker side receives the batch, touches it (sum) and answers with a 1000-float result, as a
model worker does. Run: ``python benchmarks/ipc.py``. The result decided the transport in
``modelhost/workers/pool.py``; numbers are in docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import struct
import sys
import time
from multiprocessing import shared_memory
from multiprocessing.connection import Connection

import numpy as np

LENGTH = struct.Struct("!i")
SHAPES = {"tiny 1x3x9x9": (1, 3, 9, 9), "one 224 image": (1, 3, 224, 224),
          "batch of 8 224 images": (8, 3, 224, 224)}


def child(fd: int) -> None:
    """Echo loop: b'P'+tensor bytes (pipe) or b'S'+shm name+shape (shared memory)."""
    conn = Connection(fd)
    result = np.zeros(1000, np.float32).tobytes()
    attached: dict[str, shared_memory.SharedMemory] = {}
    while True:
        try:
            frame = conn.recv_bytes()
        except EOFError:
            return
        if frame[:1] == b"P":
            np.frombuffer(memoryview(frame)[1:], np.float32).sum()
        else:
            name, size = frame[1:].decode().split(":")
            shm = attached.get(name) or attached.setdefault(name, _attach(name))
            np.frombuffer(shm.buf, np.float32, int(size)).sum()
        conn.send_bytes(result)


def _attach(name: str) -> shared_memory.SharedMemory:
    """Attach without the resource tracker claiming the segment (the parent owns it)."""
    from multiprocessing import resource_tracker

    shm = shared_memory.SharedMemory(name)
    resource_tracker.unregister(shm._name, "shared_memory")
    return shm


async def round_trips(shape: tuple[int, ...], mode: str, n: int) -> float:
    import socket
    import subprocess

    ours, theirs = socket.socketpair()
    with theirs:
        proc = subprocess.Popen([sys.executable, __file__, "child", str(theirs.fileno())],
                                pass_fds=(theirs.fileno(),))
    reader, writer = await asyncio.open_connection(sock=ours)
    batch = np.random.default_rng(0).random(shape, dtype=np.float32)
    shm = shared_memory.SharedMemory(create=True, size=batch.nbytes)

    def frame() -> bytes:
        if mode == "pipe":
            return b"P" + batch.tobytes()
        np.ndarray(batch.shape, np.float32, shm.buf)[...] = batch  # copy into the slot
        return b"S" + f"{shm.name}:{batch.size}".encode()

    async def once() -> None:
        body = frame()
        writer.write(LENGTH.pack(len(body)) + body)
        (size,) = LENGTH.unpack(await reader.readexactly(4))
        await reader.readexactly(size)

    for _ in range(20):
        await once()
    started = time.perf_counter()
    for _ in range(n):
        await once()
    elapsed = (time.perf_counter() - started) / n * 1000
    writer.close()
    await writer.wait_closed()  # the child sees EOF only once the close has really happened
    await asyncio.to_thread(proc.wait)
    shm.close()
    shm.unlink()
    return elapsed


async def main() -> None:
    print(f"{'payload':24s} {'pipe ms':>9s} {'shm ms':>9s}")
    for name, shape in SHAPES.items():
        n = 2000 if shape[-1] == 9 else 300
        pipe = min([await round_trips(shape, "pipe", n) for _ in range(3)])
        shm = min([await round_trips(shape, "shm", n) for _ in range(3)])
        print(f"{name:24s} {pipe:9.3f} {shm:9.3f}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        child(int(sys.argv[2]))
    else:
        import uvloop

        uvloop.run(main())
