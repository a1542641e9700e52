"""Python code inside a model runs only with --trust-model-code: Keras Lambda layers and a
user's pipeline.py (batch ``predict`` and per-image ``predict_image``)."""

from __future__ import annotations

import time

import pytest

from ..support import serve_in_process
from .conftest import assert_matches_framework


def _errors(server) -> dict[str, str]:
    return {m["name"]: m["error"] for m in server.client.get("/api/models").json()["models"]}


@pytest.mark.slow
def test_lambda_layer_is_refused_without_trust(built, tmp_path):
    server = serve_in_process([str(built / "lambda"), "--keep-going", "--runtime", "native"],
                              tmp_path, wait_ready=False, timeout=300)
    try:
        server.client.get("/readyz")  # answers once loading is over
        error = _wait_failed(server, "lambda_keras")
        assert "model.keras contains a Lambda layer, which runs Python code stored in the " \
               "file; load it only if you trust its author, with --trust-model-code" in error
        assert server.client.get("/readyz").status_code == 503
    finally:
        assert server.stop() == 0


@pytest.mark.slow
def test_lambda_layer_serves_with_trust(built, tmp_path):
    server = serve_in_process([str(built / "lambda"), "--trust-model-code", "--cache-dir",
                               str(tmp_path / "cache")], tmp_path, timeout=300)
    try:
        assert_matches_framework(server, built, "lambda_keras")
    finally:
        assert server.stop() == 0


@pytest.mark.slow
def test_pipelines_serve_with_trust(built, tmp_path):
    server = serve_in_process([str(built / "pipelines"), "--trust-model-code"], tmp_path)
    try:
        for model in ("digits_pipeline", "digits_by_image"):
            correct = assert_matches_framework(server, built, model)
            assert correct >= 24, (model, correct)
            assert server.client.get(f"/api/models/{model}").json()["format"] == "python"
        whole = server.client.get("/api/models/digits_by_image").json()["input"]
        assert whole == {"whole_image": True, "channels": 3}  # no 224×224 claim
        assert server.client.get("/api/models/digits_pipeline").json()["input"]["width"] > 0
    finally:
        assert server.stop() == 0
    assert '"preprocessing":{"whole_image":true}' in server.log()


def test_pipeline_is_refused_without_trust(built, tmp_path):
    server = serve_in_process([str(built / "pipelines"), "--keep-going"], tmp_path,
                              wait_ready=False)
    try:
        for model in ("digits_pipeline", "digits_by_image"):
            assert "pipeline.py is Python code; modelhost runs it only if you trust it, with " \
                   "--trust-model-code" in _wait_failed(server, model)
    finally:
        assert server.stop() == 0


def _wait_failed(server, model: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        error = _errors(server).get(model)
        if error:
            return error
        time.sleep(0.2)
    raise AssertionError(f"{model} did not fail:\n{server.log()}")


def test_predict_runs_a_pipeline_locally_only_with_trust(built):
    """``modelhost predict`` names --trust-model-code, and has it."""
    import json
    import subprocess
    import sys

    import numpy as np

    from .conftest import expected

    model = str(built / "pipelines" / "digits_pipeline")
    name, reference = next(iter(expected(built, "digits_pipeline").items()))
    command = [sys.executable, "-m", "modelhost.cli", "predict", model,
               str(built / "images" / name), "--json", "--top-k", "1"]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "--trust-model-code" in refused.stderr
    done = subprocess.run([*command, "--trust-model-code"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    top = json.loads(done.stdout)["predictions"][0]
    assert top["index"] == int(np.argmax(reference))
    assert abs(top["score"] - float(np.max(reference))) <= 1e-4
    inspected = subprocess.run([sys.executable, "-m", "modelhost.cli", "inspect",
                                str(built / "pipelines" / "digits_by_image"),
                                "--trust-model-code"], capture_output=True, text=True, timeout=120)
    assert inspected.returncode == 0, inspected.stderr
    assert "input: the whole image, upright" in inspected.stdout
    assert "224×224" not in inspected.stdout
