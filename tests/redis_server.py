"""A throwaway redis-server for tests: a free loopback port, nothing saved to disk (the rate
limits' shared storage, used by tests/security and the multi-instance test in tests/deploy)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

from .postgres import free_port


@dataclass
class Redis:
    url: str
    process: subprocess.Popen
    client: redis.Redis


@contextlib.contextmanager
def redis_server(folder: Path) -> Iterator[Redis]:
    """redis-server on 127.0.0.1 until the block ends (``folder`` is its working directory)."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is needed (.ci/run installs it)"
    port = free_port()
    process = subprocess.Popen([binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                                "--appendonly", "no", "--dir", str(folder)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert process.poll() is None and time.monotonic() < deadline, \
                    "redis-server did not start"
                time.sleep(0.05)
        yield Redis(f"redis://127.0.0.1:{port}", process, client)
    finally:
        client.close()
        if process.poll() is None:
            process.terminate()
            process.wait(10)
