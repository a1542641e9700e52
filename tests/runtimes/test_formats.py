"""Format detection from names and bytes, ``--format``, ``inspect`` of a frozen graph, and the
message naming the extra to install when a framework is missing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from modelhost.repository import RepositoryError, load_repository

from ..support import start_server


def test_formats_are_detected_from_file_names(built):
    formats = {s.name: s.format for s in load_repository(built / "repo")}
    assert formats == {"digits_keras": "keras", "digits_h5": "keras",
                       "digits_savedmodel": "tf_savedmodel", "digits_frozen": "tf_frozen",
                       "mobilenet": "keras", "torch_script": "torchscript",
                       "torch_export": "torch_export"}
    assert {s.format for s in load_repository(built / "pipelines")} == {"python"}
    (spec,) = load_repository(built / "repo" / "digits_savedmodel" / "saved_model")
    assert spec.format == "tf_savedmodel"


@pytest.mark.parametrize(("source", "fmt"), [
    ("digits_keras/model.keras", "keras"), ("digits_h5/model.h5", "keras"),
    ("torch_script/model.pt", "torchscript"), ("torch_export/model.pt2", "torch_export"),
])
def test_formats_are_detected_from_content_under_another_name(built, tmp_path, source, fmt):
    renamed = tmp_path / "classifier.bin"
    shutil.copy(built / "repo" / source, renamed)
    (spec,) = load_repository(renamed)
    assert (spec.name, spec.format) == ("classifier", fmt)


def test_format_flag_overrides_detection(built, tmp_path):
    renamed = tmp_path / "graph.bytes"
    shutil.copy(built / "repo" / "digits_frozen" / "model.pb", renamed)
    with pytest.raises(RepositoryError, match="unknown model format"):
        load_repository(renamed)
    (spec,) = load_repository(renamed, "tf_frozen")
    assert spec.format == "tf_frozen"


def _inspect(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "modelhost.cli", "inspect", *args],
                          capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "COLUMNS": "200"})


@pytest.mark.slow
def test_inspect_frozen_graph_lists_every_op_and_finds_its_ends(built):
    model = str(built / "repo" / "digits_frozen")
    done = _inspect(model)
    assert done.returncode == 0, done.stderr
    rows = {line.split("│")[1].strip(): line for line in done.stdout.splitlines()
            if line.count("│") == 4}
    assert "Placeholder" in rows["pixels"] and "[-1, 8, 8, 1]" in rows["pixels"]
    softmax = "functional_1/dense_1/Softmax"
    assert "Softmax" in rows[softmax] and "[-1, 10]" in rows[softmax]
    assert "│ input  │ pixels:0   │ float32 │ [-1, 8, 8, 1] │" in done.stdout
    assert "│ output │ Identity:0 │ float32 │ [-1, 10]      │" in done.stdout

    chosen = _inspect(model, "--output-name", softmax)
    assert chosen.returncode == 0, chosen.stderr
    assert f"│ output │ {softmax}:0 │ float32 │ [-1, 10]" in chosen.stdout

    wrong = _inspect(model, "--output-name", "nope")
    assert wrong.returncode == 2
    assert "the graph has no tensor 'nope:0'" in wrong.stderr


@pytest.mark.slow
def test_missing_framework_names_the_extra(built, tmp_path):
    """With TensorFlow and Keras unimportable (a package that raises ModuleNotFoundError as an
    absent one does, first on the path), the model's error names the extra to install."""
    blocked = tmp_path / "blocked"
    for name in ("tensorflow", "keras"):
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(
            f"raise ModuleNotFoundError(\"No module named '{name}'\", name={name!r})\n")
    path = f"{blocked}:{os.environ.get('PYTHONPATH', '')}"
    # a subprocess server: the blocked path must reach its conversion and worker processes
    server = start_server([str(built / "repo" / "digits_h5"), "--keep-going", "--cache-dir",
                           str(tmp_path / "cache")], tmp_path, wait_ready=False,
                          env={"PYTHONPATH": path})
    try:
        deadline = time.monotonic() + 120
        while (meta := server.client.get("/api/models/digits_h5").json())["state"] == "loading":
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.2)
        assert meta["state"] == "failed"
        assert 'install it with: pip install "modelhost[tensorflow]"' in meta["error"]
        assert meta["runtime"] == (
            "keras runtime; conversion to ONNX failed: RuntimeUnavailable: model.h5: the keras "
            'runtime needs tensorflow, which is not installed; install it with: pip install '
            '"modelhost[tensorflow]"')
    finally:
        assert server.stop() == 0


@pytest.mark.slow
@pytest.mark.parametrize(("model", "lines"), [
    ("digits_keras", ["digits_keras version 1 · keras · model.keras · 5,930 parameters",
                      "ops: InputLayer×1, Rescaling×1, Conv2D×1, Flatten×1, Dense×1",
                      "scaling none (the model scales its own input)"]),
    ("torch_export", ["torch_export version 1 · torch_export · model.pt2 · 5,930 parameters",
                      "8×8 NCHW float32, greyscale, scaling unit"]),
])
def test_inspect_reads_each_framework(built, model, lines):
    done = _inspect(str(built / "repo" / model))
    assert done.returncode == 0, done.stderr
    for line in lines:
        assert line in done.stdout
    assert "oneDNN" not in done.stderr and "absl" not in done.stderr  # no framework noise
    assert "runtime: converted to ONNX and verified when served (--runtime auto)" in done.stdout


@pytest.mark.slow
def test_serving_keras_writes_nothing_in_home_and_states_one_parameter_count(built, tmp_path):
    """Keras writes ~/.keras and ONNX Runtime ~/.cache on their own: with HOME watched (and
    no XDG_* variables set), a
    converted .h5 is served (conversion and worker processes), and the count ``inspect``
    states is the one served; every stderr line is a JSON log line (no TensorFlow noise)."""
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home)}  # and no XDG_* variables in this environment
    model = str(built / "repo" / "digits_h5")
    server = start_server([model, "--cache-dir", str(tmp_path / "cache")], tmp_path,
                          env=env, timeout=300)
    try:
        meta = server.client.get("/api/models/digits_h5").json()
        assert meta["runtime"].startswith("ONNX Runtime, converted from keras")
        assert meta["parameters"] == 5_930
    finally:
        assert server.stop() == 0
    inspected = subprocess.run([sys.executable, "-m", "modelhost.cli", "inspect", model],
                               capture_output=True, text=True, timeout=300,
                               env={**os.environ, **env,
                                    "MODELHOST_CACHE_DIR": str(tmp_path / "cache")})
    assert "model.h5 · 5,930 parameters" in inspected.stdout
    assert [p.relative_to(home) for p in home.rglob("*")] == []
    for line in server.log().splitlines():
        assert line.startswith("{"), line
