"""A throwaway PostgreSQL server for tests: ``initdb`` + ``postgres`` on a free loopback port in
a temporary folder, run as the unprivileged ``nobody`` user when the tests run as root
(PostgreSQL refuses to run as root)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from .support import free_port


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    raise AssertionError(f"PostgreSQL's {name} is not installed (.ci/run installs it)")


def _as_user() -> list[str]:
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"] \
        if os.geteuid() == 0 else []


@dataclass
class Postgres:
    """One PostgreSQL server; ``stop(immediate=True)`` simulates a crash, ``start`` restarts."""

    folder: Path
    port: int

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def init(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.folder, "nobody", "nogroup")
        subprocess.run([*_as_user(), _binary("initdb"), "-D", str(self.data), "-U", "postgres",
                        "--auth=trust", "-E", "UTF8", "--no-locale"],
                       check=True, capture_output=True,
                       env={**os.environ, "HOME": str(self.folder)})

    def start(self) -> None:
        subprocess.run(
            [*_as_user(), _binary("pg_ctl"), "-D", str(self.data), "-l",
             str(self.folder / "server.log"), "-w", "-t", "60", "start", "-o",
             f"-c listen_addresses=127.0.0.1 -p {self.port} "
             f"-c unix_socket_directories={self.folder} -c fsync=on"],
            check=True, capture_output=True,
        )
        self.wait()

    def stop(self, immediate: bool = False) -> None:
        subprocess.run(
            [*_as_user(), _binary("pg_ctl"), "-D", str(self.data), "-w", "stop", "-m",
             "immediate" if immediate else "fast"],
            check=True, capture_output=True,
        )

    def wait(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.dsn(), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def dsn(self, database: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={database}"

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@contextlib.contextmanager
def postgres_server():
    """A started server in its own folder under /tmp (which ``nobody`` can reach); stopped
    and removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="modelhost-pg-"))
    server = Postgres(folder, free_port())
    try:
        server.init()
        server.start()
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            server.stop()
        shutil.rmtree(folder, ignore_errors=True)
