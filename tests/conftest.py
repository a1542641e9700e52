"""Shared fixtures: real servers on 127.0.0.1 with real models.

Loaded before any test module, this points the user's data folders at one fresh temporary
folder for the whole session, so no server (in this process or a subprocess, which inherits
the environment) reads or writes the real user's: the default prediction log
(``$XDG_DATA_HOME/modelhost``) and modelhost's cache with the journal and tuned layouts
(``MODELHOST_CACHE_DIR``, which would otherwise be ``$XDG_CACHE_HOME/modelhost``).
``XDG_CACHE_HOME`` itself stays: the per-machine caches of built test models, torch and
matplotlib live there on purpose. Under pytest-xdist each worker process loads this module, so
each has a folder of its own.

It also groups the tests for xdist (.ci/run: ``-n 3 --dist loadgroup``): a file, or the files
sharing one costly session-scoped server, run in one worker.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .support import InProcessServer, rgb_model, serve_in_process

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="modelhost-tests-home-"))
os.environ["XDG_DATA_HOME"] = str(_SESSION_HOME / "data")
os.environ["MODELHOST_CACHE_DIR"] = str(_SESSION_HOME / "cache")
# Servers start with today's defaults instead of measuring their layout (up to 20 s per new
# model): tests/test_tuning.py and tests/cli/test_tune.py turn tuning on where it is the point.
os.environ["MODELHOST_TUNE"] = "0"


def pytest_sessionfinish(session, exitstatus) -> None:
    shutil.rmtree(_SESSION_HOME, ignore_errors=True)


# Test files that share one costly session-scoped server: under pytest-xdist (``-n``, as .ci/run
# runs the suite) each group runs in one worker, so the server starts (and converts) once.
_SHARED_SERVERS = {
    "auto_server": ("runtimes/test_serving.py", "runtimes/test_convert.py"),
    "demo_server": ("e2e/test_demo_http.py", "e2e/test_faithful_serving.py", "e2e/test_page.py"),
}


def _xdist_group(item: pytest.Item) -> str:
    """The file, or the name of the shared server its file belongs to."""
    path = item.path.relative_to(Path(__file__).parent).as_posix()
    return next((name for name, files in _SHARED_SERVERS.items() if path in files), path)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items) -> None:
    """One xdist group per file (module-scoped servers start once) or per shared server
    (``--dist loadgroup`` in .ci/run); without xdist the marks do nothing. In an xdist worker
    the groups holding a ``slow`` test come first (.ci/run keeps this order with
    ``--no-loadscope-reorder``), so the longest ones start at once instead of ending the run.
    It runs first: pytest-xdist's own hook reads the marks (and appends ``@GROUP`` to each test's
    id); after it, every test would be scheduled alone (tests/test_session.py checks)."""
    groups = {item: _xdist_group(item) for item in items}
    for item, group in groups.items():
        item.add_marker(pytest.mark.xdist_group(group))
    if os.environ.get("PYTEST_XDIST_WORKER"):
        slow = {group for item, group in groups.items() if item.get_closest_marker("slow")}
        items.sort(key=lambda item: groups[item] not in slow)  # stable: file order kept


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory) -> Path:
    """A repository of two small real models: ``rgb`` (NCHW) and ``rgb_nhwc`` (NHWC, v1+v2)."""
    root = tmp_path_factory.mktemp("repo")
    rgb_model(root / "rgb", toml='[output]\ntop_k = 3\n')
    rgb_model(root / "rgb_nhwc" / "1", layout="NHWC")
    rgb_model(root / "rgb_nhwc" / "2", layout="NHWC", size=16)
    return root


@pytest.fixture(scope="session")
def repo_server(model_repo, tmp_path_factory) -> InProcessServer:
    """One server for the read-only API tests, with server paths and URLs enabled (in this
    process: the real app over real HTTP with real workers)."""
    tmp = tmp_path_factory.mktemp("repo_server")
    images = tmp / "images"
    images.mkdir()
    server = serve_in_process(
        [str(model_repo), "--allow-path-root", str(images), "--allow-urls",
         "--allow-private-urls", "--max-body", str(2 * 2**20), "--max-pixels", "4000000"],
        tmp,
    )
    server.images = images  # type: ignore[attr-defined]
    yield server
    assert server.stop() == 0


@pytest.fixture(scope="session")
def demo_start(tmp_path_factory) -> Iterator[tuple[InProcessServer, list[dict]]]:
    """The demo models (imagenet, digits, colors) as ``modelhost serve`` serves them from a
    fresh cache, and what /healthz and /readyz answered, every 0.1 s, until it was ready (the
    imagenet demo is converted during this first start)."""
    tmp = tmp_path_factory.mktemp("demo")
    server = serve_in_process(["--cache-dir", str(tmp / "cache")], tmp, wait_ready=False,
                              timeout=300)
    seen: list[dict] = []
    deadline = time.monotonic() + 300
    while server.alive and time.monotonic() < deadline:
        ready = server.client.get("/readyz")
        seen.append({"healthz": server.client.get("/healthz").status_code,
                     "readyz": ready.status_code, **ready.json()})
        if ready.status_code == 200:
            break
        time.sleep(0.1)
    yield server, seen
    assert server.stop() == 0


@pytest.fixture(scope="session")
def demo_server(demo_start) -> str:
    """The demo server's URL, once it is ready."""
    server, seen = demo_start
    assert seen and seen[-1]["readyz"] == 200, f"not ready: {seen[-1:]}\n{server.log()}"
    return server.url
