"""Shared fixtures: real servers on 127.0.0.1 with real models."""

from __future__ import annotations

from pathlib import Path

import pytest

from .support import InProcessServer, rgb_model, serve_in_process


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
def demo_server(tmp_path_factory) -> str:
    """The demo models (imagenet, digits, colors) as ``modelhost serve`` serves them."""
    tmp = tmp_path_factory.mktemp("demo")
    server = serve_in_process(["--cache-dir", str(tmp / "cache")], tmp, timeout=300)
    yield server.url
    assert server.stop() == 0
