"""Fixtures for the runtime tests: every model format built for real, and servers serving them.

The builders run as subprocesses (TensorFlow and torch take seconds to import and do not share
the test process's warning filters); keras and torch build in parallel, once per machine and
set of framework versions (a cache keyed by them). Servers are started
once per session: one converting everything to ONNX (``--runtime auto``), one serving each
framework natively.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ..support import InProcessServer, machine_cache, serve_in_process
from .build_models import write_images

BUILDER = Path(__file__).with_name("build_models.py")
FRAMEWORK_MODELS = ("digits_keras", "digits_h5", "digits_savedmodel", "digits_frozen",
                    "mobilenet", "torch_script", "torch_export")


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> Path:
    """OUT/repo (framework models), OUT/lambda, OUT/fallback, OUT/pipelines, OUT/images,
    OUT/expected/<model>.json (each framework's own probabilities per image).

    Built once per machine and kept (see ``build_cache``); each session gets its own copy.
    """
    out = tmp_path_factory.mktemp("built") / "models"
    shutil.copytree(build_cache(tmp_path_factory), out, symlinks=True)
    return out


def build_cache(tmp_path_factory) -> Path:
    """The built models, under a key of build_models.py and the frameworks' versions
    (``support.machine_cache``; two to three minutes on 2 cores when the key is new)."""
    return machine_cache("built", [BUILDER.read_bytes()], _build,
                         tmp_path_factory.mktemp("built-fresh"))


def _build(out: Path) -> Path:
    write_images(out)
    builders = [subprocess.Popen([sys.executable, str(BUILDER), which, str(out)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                for which in ("keras", "torch", "python")]
    for builder in builders:
        _, err = builder.communicate(timeout=600)
        assert builder.returncode == 0, err.decode(errors="replace")[-3000:]
    return out


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def auto_server(built, cache_dir, tmp_path_factory) -> InProcessServer:
    """The framework models with ``--runtime auto``: each converted to ONNX and verified."""
    tmp = tmp_path_factory.mktemp("auto")
    server = serve_in_process([str(built / "repo"), "--cache-dir", str(cache_dir)], tmp,
                              timeout=900)
    yield server
    assert server.stop() == 0


@pytest.fixture(scope="session")
def native_server(built, tmp_path_factory) -> InProcessServer:
    """The same models in their own frameworks (``--runtime native``)."""
    tmp = tmp_path_factory.mktemp("native")
    server = serve_in_process([str(built / "repo"), "--runtime", "native"], tmp, timeout=600)
    yield server
    assert server.stop() == 0


def expected(built: Path, model: str) -> dict[str, np.ndarray]:
    rows = json.loads((built / "expected" / f"{model}.json").read_text())
    return {name: np.asarray(row) for name, row in rows.items()}


def served(server: InProcessServer, model: str, image: Path) -> np.ndarray:
    """The server's probabilities for every class, in index order."""
    response = server.client.post(f"/api/models/{model}/predict", params={"top_k": 1000},
                                  files={"image": (image.name, image.read_bytes())})
    assert response.status_code == 200, response.text
    scores = {p["index"]: p["score"] for p in response.json()["predictions"]}
    return np.asarray([scores[i] for i in range(len(scores))])


def assert_matches_framework(server: InProcessServer, built: Path, model: str) -> int:
    """Every test image: same top-1 as the framework, probabilities within 1e-4. Returns how
    many digits were classified correctly (their true label is in the file name)."""
    correct = 0
    for name, reference in expected(built, model).items():
        probs = served(server, model, built / "images" / name)
        assert probs.shape == reference.shape, name
        assert int(probs.argmax()) == int(reference.argmax()), (model, name, probs, reference)
        assert np.max(np.abs(probs - reference)) <= 1e-4, (model, name)
        if name.startswith("digit-"):
            correct += int(probs.argmax()) == int(name.split("-")[2].split(".")[0])
    return correct
