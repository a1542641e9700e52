"""Fixtures for the attack and fault suite: a small real model repository."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..support import rgb_model


@pytest.fixture(scope="session")
def rgb_repo(tmp_path_factory) -> Path:
    """One real ONNX model, ``rgb``, whose answer is the dominant colour of the image."""
    root = tmp_path_factory.mktemp("security_repo")
    rgb_model(root / "rgb")
    return root
