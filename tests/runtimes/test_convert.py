"""Conversion to ONNX: cached by the source file's hash, a failed verification falls back to
the native runtime and says why, ``--runtime onnx`` refuses instead; the port opens before a
conversion and /readyz shows it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace

import httpx
import pytest

from modelhost import __version__
from modelhost.repository import load_repository
from modelhost.supply.convert import _install, cache_key
from modelhost.types import RuntimeOptions

from ..support import free_port, serve_in_process
from .conftest import FRAMEWORK_MODELS, assert_matches_framework


@pytest.mark.slow
def test_conversions_are_cached_by_source_hash_and_reused(auto_server, built, cache_dir,
                                                          tmp_path):
    specs = {s.name: replace(s, options=RuntimeOptions()) for s in load_repository(built / "repo")}
    cached = {p.name for p in (cache_dir / "onnx").iterdir() if not p.name.startswith(".")}
    assert cached == {cache_key(specs[m]) for m in FRAMEWORK_MODELS}
    onnx_file = cache_dir / "onnx" / cache_key(specs["digits_h5"]) / "model.onnx"
    before = onnx_file.stat().st_mtime_ns
    auto_server.wait_for_log("digits_h5: converting keras to ONNX")

    again = serve_in_process([str(built / "repo" / "digits_h5"), "--cache-dir", str(cache_dir)],
                             tmp_path)
    try:
        assert_matches_framework(again, built, "digits_h5")
        runtime = again.client.get("/api/models/digits_h5").json()["runtime"]
        assert runtime.startswith("ONNX Runtime, converted from keras")
    finally:
        assert again.stop() == 0
    assert "converting" not in again.log()
    assert onnx_file.stat().st_mtime_ns == before


@pytest.mark.slow
def test_failed_verification_serves_natively_and_says_why(built, tmp_path):
    server = serve_in_process([str(built / "fallback"), "--cache-dir", str(tmp_path / "cache")],
                              tmp_path, timeout=300)
    try:
        meta = server.client.get("/api/models/noisy_torch").json()
        assert meta["state"] == "ready"
        assert meta["format"] == "torchscript"
        assert meta["runtime"].startswith("torchscript runtime; conversion to ONNX failed: "
                                          "ValueError: the ONNX model disagrees with the original")
        image = next((built / "images").glob("digit-*.png"))
        response = server.client.post("/api/models/noisy_torch/predict",
                                      files={"image": (image.name, image.read_bytes())})
        assert response.status_code == 200
        assert len(response.json()["predictions"]) == 5
    finally:
        assert server.stop() == 0
    assert "noisy_torch: serving with the torchscript runtime; conversion to ONNX failed" \
        in server.log()
    (folder,) = (tmp_path / "cache" / "onnx").glob("[0-9a-f]*")  # the failure is remembered
    assert [p.name for p in folder.iterdir()] == [f"failed-{__version__}.json"]
    again = serve_in_process([str(built / "fallback"), "--cache-dir", str(tmp_path / "cache")],
                         tmp_path, timeout=300)
    try:  # no second attempt: the same answer, at once
        assert again.client.get("/api/models/noisy_torch").json()["runtime"] == meta["runtime"]
    finally:
        assert again.stop() == 0
    assert "converting" not in again.log()


@pytest.mark.slow
def test_runtime_onnx_refuses_a_model_that_does_not_convert(built, tmp_path):
    """The port is open while the conversion runs and fails; then the server stops with one
    line and exit 2 and prints no URL (as when conversion ran before the port opened)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "modelhost.cli", "serve", str(built / "fallback"), "--port",
         str(port), "--runtime", "onnx", "--cache-dir", str(tmp_path),
         "--db", f"sqlite:///{tmp_path / 'log.db'}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        states = poll_states(f"http://127.0.0.1:{port}", "noisy_torch", process.poll)
        stdout, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert "converting" in states, states
    assert process.returncode == 2, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("modelhost: ")]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("modelhost: noisy_torch: model.pt cannot be served with ONNX "
                               "Runtime (--runtime onnx): ValueError: the ONNX model disagrees")
    assert "Traceback" not in stderr and stdout == ""


@pytest.mark.slow
def test_the_port_opens_before_a_keras_conversion_ends(built, tmp_path):
    """Issue 15: /healthz answers at once, /readyz is 503 with the model converting (its stage,
    seconds and timeout, the same on /api/models), then loading → ready; the converted model
    answers as Keras itself does."""
    server = serve_in_process([str(built / "repo" / "digits_h5"), "--cache-dir",
                               str(tmp_path / "cache")], tmp_path, wait_ready=False)
    try:
        states = poll_states(server.url, "digits_h5", lambda: None if server.alive else 1)
        assert "converting" in states and states[-1] == "ready", states
        assert states.index("converting") < len(states) - 1
        assert assert_matches_framework(server, built, "digits_h5") > 0
        listed = server.client.get("/api/models").json()["models"][0]
        assert (listed["state"], listed["progress"]) == ("ready", None)
        assert listed["runtime"].startswith("ONNX Runtime, converted from keras")
    finally:
        assert server.stop() == 0


def poll_states(url: str, model: str, exited) -> list[str]:
    """The model's states as /readyz showed them (each change once) until it was ready or
    the server stopped; while converting, its progress and /api/models agree."""
    states: list[str] = []
    deadline = time.monotonic() + 300
    with httpx.Client(base_url=url, timeout=10) as client:
        while time.monotonic() < deadline and exited() is None:
            try:
                health = client.get("/healthz")
                ready = client.get("/readyz")
            except httpx.TransportError:  # not listening yet, or stopped
                time.sleep(0.05)
                continue
            assert health.status_code == 200
            state = ready.json()["models"][model]
            if not states or states[-1] != state["state"]:
                states.append(state["state"])
            if ready.status_code == 200:
                return states
            assert ready.status_code == 503 and ready.headers["retry-after"]
            if state["state"] == "converting":
                progress = state["progress"]
                assert progress["stage"].startswith("converting ")
                assert progress["stage"].endswith(" to ONNX")
                assert progress["timeout"] == 600 and 0 <= progress["seconds"] < 300
                listed = client.get(f"/api/models/{model}").json()
                assert listed["state"] in ("converting", "loading", "ready", "failed")
                if listed["state"] == "converting":
                    assert listed["progress"]["stage"] == progress["stage"]
            time.sleep(0.05)
    return states


@pytest.mark.slow
def test_prepare_converts_ahead_of_time_and_serve_converts_nothing(built, tmp_path):
    model = str(built / "repo" / "digits_h5")
    cache = str(tmp_path / "cache")
    done = subprocess.run([sys.executable, "-m", "modelhost.cli", "prepare", model,
                           "--cache-dir", cache], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("digits_h5: ONNX Runtime, converted from keras: verified on 8 "
                                  "inputs")
    server = serve_in_process([model, "--cache-dir", cache], tmp_path)
    try:
        assert_matches_framework(server, built, "digits_h5")
    finally:
        assert server.stop() == 0
    assert "converting" not in server.log()


@pytest.mark.slow
def test_a_dynamic_batch_export_converts_with_the_batch_kept_dynamic(built, tmp_path):
    """A .pt2 whose forward uses x.view(x.shape[0], -1), exported with a dynamic batch."""
    import numpy as np
    import onnxruntime

    model = built / "dynamic" / "view_export"
    cache = tmp_path / "cache"
    done = subprocess.run([sys.executable, "-m", "modelhost.cli", "prepare", str(model),
                           "--cache-dir", str(cache)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("view_export: ONNX Runtime, converted from torch_export: "
                                  "verified on 8 inputs"), done.stdout
    assert "at batch sizes 1, 2 and 8" in done.stdout
    (onnx_file,) = cache.glob("onnx/*/model.onnx")
    session = onnxruntime.InferenceSession(str(onnx_file))
    assert not isinstance(session.get_inputs()[0].shape[0], int)  # a named, dynamic axis
    for size in (1, 2, 8, 13):
        out = session.run(None, {session.get_inputs()[0].name:
                                 np.zeros((size, 1, 8, 8), np.float32)})[0]
        assert out.shape == (size, 10)
    server = serve_in_process([str(model), "--cache-dir", str(cache)], tmp_path)
    try:
        assert_matches_framework(server, built, "view_export")
    finally:
        assert server.stop() == 0


def _conversion(folder, marker: str):
    """A verified conversion as the converter leaves it: the model and an ok report."""
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_text(marker)
    (folder / "report.json").write_text(json.dumps({"ok": True}))
    return folder


def test_a_second_conversion_never_replaces_an_installed_one(tmp_path):
    """Two processes sharing one cache converted the same model: the second to finish keeps
    the first's verified result (that process may be loading it) instead of deleting it."""
    target = _conversion(tmp_path / "cache" / "m", "first")
    _install(_conversion(tmp_path / "work-2", "second"), target)
    assert (target / "model.onnx").read_text() == "first"
    # a recorded failure is replaced by a verified conversion
    failed = tmp_path / "cache" / "f"
    failed.mkdir()
    (failed / f"failed-{__version__}.json").write_text(json.dumps({"ok": False}))
    _install(_conversion(tmp_path / "work-3", "verified"), failed)
    assert (failed / "model.onnx").read_text() == "verified"
    assert json.loads((failed / "report.json").read_text())["ok"] is True
