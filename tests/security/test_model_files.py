"""Model files are trusted only as far as their format allows (issue 6, item 9).

Every case is a real file given to the real ``modelhost serve``: a damaged or mismatched model
stops start-up with exit status 1 and one error line naming the model, its file and the reason
(no traceback); ``--keep-going`` serves the others; with ``--watch`` a corrupt replacement or a
corrupt new version leaves the old version serving. Files that would make a loader read outside
the model's folder (ONNX external data) or run code (pickles inside a ``torch.export`` archive)
are refused, and the canary they aim at is untouched. Keras Lambda layers are refused the same
way: ``tests/runtimes/test_trust.py``. No request can make the server load a model from a path.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelhost.repository import load_repository
from modelhost.runtimes.base import ModelFileError
from modelhost.runtimes.onnx import OnnxRuntime
from modelhost.supply.specs import checked

from ..runtimes.test_watch import Load
from ..support import (
    children_of,
    rgb_model,
    serve_in_process,
    serve_in_process_until_exit,
    solid,
)

RED = solid((250, 10, 10))
CLI = [sys.executable, "-m", "modelhost.cli", "serve"]

# Written in a subprocess: torch takes seconds to import and must not share this process's
# warning filters. Besides a TorchScript and an exported program, it writes two exported
# programs whose pickles would run ``touch CANARY`` when loaded by torch.export.load itself:
# one marks a weight as pickled, one hides the pickle in the sample inputs (which torch loads
# with weights_only=True and then, when that fails, without).
TORCH_BUILDER = r"""
import io, json, os, sys, zipfile
import torch

out, canary = sys.argv[1], sys.argv[2]


class Colour(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.full((3,), 10.0))

    def forward(self, x):
        return x.mean((2, 3)) * self.scale


class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {canary}",))


example = torch.zeros(1, 3, 9, 9)
torch.jit.save(torch.jit.trace(Colour(), example), f"{out}/model.pt")
program = torch.export.export(Colour().eval(), (example,))
torch.export.save(program, f"{out}/model.pt2")
torch.save({"weight": torch.zeros(3)}, f"{out}/checkpoint.pt")
buffer = io.BytesIO()
torch.save(Evil(), buffer)
evil = buffer.getvalue()


def rewrite(target, change):
    with zipfile.ZipFile(f"{out}/model.pt2") as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, change(info.filename, src.read(info.filename)))


def pickled_weight(name, data):
    if name.endswith("model_weights_config.json"):
        config = json.loads(data)
        first = next(iter(config["config"].values()))
        first["use_pickle"] = True
        return json.dumps(config).encode()
    return evil if name.endswith("weights/weight_0") else data


rewrite(f"{out}/pickled_weight.pt2", pickled_weight)
rewrite(f"{out}/pickled_inputs.pt2",
        lambda name, data: evil if name.endswith("sample_inputs/model.pt") else data)
"""


@pytest.fixture(scope="session")
def torch_files(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("torch_files")
    done = subprocess.run([sys.executable, "-c", TORCH_BUILDER, str(out), str(out / "CANARY")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (out / "CANARY").exists()
    return out


# -- damaged files --------------------------------------------------------------------------


def _png() -> bytes:
    return solid((1, 2, 3))


def _junk_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("junk.bin", os.urandom(512))
    return buffer.getvalue()


def _onnx_bytes(tmp: Path) -> bytes:
    return rgb_model(tmp / "source").read_bytes()


def bad_model(kind: str, folder: Path, torch_dir: Path | None) -> tuple[str, str]:
    """Write the model folder for ``kind``; (its model file name, the reason expected)."""
    folder.mkdir(parents=True)
    scratch = folder.parent / f".{folder.name}-scratch"
    if kind == "truncated_onnx":
        data = _onnx_bytes(scratch)
        (folder / "model.onnx").write_bytes(data[: len(data) // 2])
        return "model.onnx", "not an ONNX model (damaged, truncated or another kind of file"
    if kind == "random_onnx":
        (folder / "model.onnx").write_bytes(np.random.default_rng(6).bytes(4096))
        return "model.onnx", "not an ONNX model (damaged, truncated or another kind of file"
    if kind == "png_as_onnx":
        (folder / "model.onnx").write_bytes(_png())
        return "model.onnx", "not an ONNX model (damaged, truncated or another kind of file"
    if kind == "labels_mismatch":
        rgb_model(folder, labels=("red", "green", "blue", "purple"))
        return "labels.txt", "labels.txt: 4 labels, but the model has 3 outputs"
    if kind == "external_data_escapes":
        external_data_model(folder, "../secret.bin")
        return "model.onnx", ("model.onnx: tensor 'w' keeps its data at '../secret.bin', "
                              "outside the model's folder; refused")
    if kind == "junk_keras":
        (folder / "model.keras").write_bytes(_junk_zip())
        return "model.keras", "model.keras: not a Keras model archive (no readable config.json"
    assert torch_dir is not None
    if kind == "truncated_torchscript":
        data = (torch_dir / "model.pt").read_bytes()
        (folder / "model.pt").write_bytes(data[: len(data) // 2])
        return "model.pt", "model.pt: not a TorchScript archive (damaged, truncated or another"
    if kind == "checkpoint_as_torchscript":
        shutil.copy(torch_dir / "checkpoint.pt", folder / "model.pt")
        return "model.pt", "model.pt: holds no TorchScript program (a torch.save checkpoint?)"
    raise AssertionError(kind)


def external_data_model(folder: Path, location: str) -> Path:
    """The rgb model with its weight stored as external data at ``location``."""
    folder.mkdir(parents=True, exist_ok=True)
    weight = numpy_helper.from_array(np.eye(3, dtype=np.float32) * 10, "w")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "36")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["mean"], axes=[2, 3], keepdims=0),
         helper.make_node("MatMul", ["mean", "w"], ["logits"])],
        "rgb", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, 9, 9])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 3])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, folder / "model.onnx")
    (folder / "labels.txt").write_text("red\ngreen\nblue\n")
    return folder / "model.onnx"


ONNX_KINDS = ["truncated_onnx", "random_onnx", "png_as_onnx", "labels_mismatch",
              "external_data_escapes", "junk_keras"]
TORCH_KINDS = ["truncated_torchscript", "checkpoint_as_torchscript"]


def serve_and_fail(model: Path, tmp: Path) -> tuple[int, list[dict], str]:
    """Run ``modelhost serve MODEL`` as a process, which must stop by itself; (exit status,
    the JSON log lines at level error, all of stderr)."""
    done = subprocess.run(
        [*CLI, str(model), "--port", "0", "--db", f"sqlite:///{tmp / 'p.db'}",
         "--cache-dir", str(tmp / "cache")],
        capture_output=True, text=True, timeout=240)
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    return done.returncode, [line for line in lines if line["level"] == "error"], done.stderr


def assert_one_clear_line(model: Path, name: str, file: str, reason: str, tmp: Path,
                          capfd: pytest.CaptureFixture[str] | None = None) -> None:
    """The start stops with status 1 and one error line, and no traceback anywhere: as a real
    process, or (given ``capfd``, which holds what the model workers wrote to stderr) in this
    process."""
    if capfd is None:
        code, errors, stderr = serve_and_fail(model, tmp)
    else:
        capfd.readouterr()
        code, lines = serve_in_process_until_exit(
            [str(model), "--cache-dir", str(tmp / "cache")], tmp)
        errors = [line for line in lines if line["level"] == "error"]
        stderr = capfd.readouterr().err + "\n".join(map(json.dumps, lines))
    assert code == 1, stderr
    assert "Traceback" not in stderr
    assert len(errors) == 1, stderr
    line = errors[0]["msg"]
    assert line.startswith(f"model {name} ({model}"), line
    assert file in line and reason in line, line
    assert line.count(f"{file}: ") <= 1, line
    assert "\n" not in line


@pytest.mark.parametrize("kind", ONNX_KINDS)
def test_damaged_model_stops_start_up_with_one_line(kind, tmp_path, capfd):
    file, reason = bad_model(kind, tmp_path / "repo" / "broken", None)
    (tmp_path / "secret.bin").write_bytes(np.eye(3, dtype=np.float32).tobytes())
    in_process = kind != "truncated_onnx"  # one case as the real process, its stderr and status
    assert_one_clear_line(tmp_path / "repo" / "broken", "broken", file, reason, tmp_path,
                          capfd if in_process else None)


@pytest.mark.slow
@pytest.mark.parametrize("kind", TORCH_KINDS)
def test_damaged_torch_model_stops_start_up_with_one_line(kind, torch_files, tmp_path, capfd):
    file, reason = bad_model(kind, tmp_path / "repo" / "broken", torch_files)
    assert_one_clear_line(tmp_path / "repo" / "broken", "broken", file, reason, tmp_path,
                          capfd)


@pytest.mark.slow
def test_keep_going_serves_the_good_model_and_reports_each_bad_one(torch_files, tmp_path):
    repo = tmp_path / "repo"
    rgb_model(repo / "good")
    expected = {kind: bad_model(kind, repo / kind, torch_files)[1]
                for kind in ONNX_KINDS + TORCH_KINDS}
    server = serve_in_process([str(repo), "--keep-going", "--cache-dir", str(tmp_path / "cache")],
                              tmp_path, wait_ready=False, timeout=240)
    try:
        models = _wait_settled(server)
        assert models["good"]["state"] == "ready"
        for kind, reason in expected.items():
            assert models[kind]["state"] == "failed", (kind, models[kind])
            assert reason in models[kind]["error"], (kind, models[kind]["error"])
            assert str(tmp_path) not in models[kind]["error"]  # no server path in the API
        response = server.client.post("/api/models/good/predict", files={"image": ("r", RED)})
        assert response.status_code == 200
        assert response.json()["predictions"][0]["label"] == "red"
        failed = server.client.post("/api/models/truncated_onnx/predict",
                                    files={"image": ("r", RED)})
        assert failed.status_code == 503 and failed.json()["error"]["code"] == "not_ready"
        ready = server.client.get("/readyz")
        assert ready.status_code == 503
        assert "labels.txt: 4 labels" in ready.json()["models"]["labels_mismatch"]["error"]
    finally:
        assert server.stop() == 0


def _wait_settled(server, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        models = {m["name"]: m for m in server.client.get("/api/models").json()["models"]}
        if all(m["state"] not in ("loading", "converting") for m in models.values()):
            return models
        time.sleep(0.2)
    raise AssertionError(f"models still loading:\n{server.log()}")


# -- files that reach outside their folder or run code -----------------------------------------


@pytest.mark.parametrize("location", ["../secret.bin", "ABSOLUTE", "link.bin",
                                      "sub/../../secret.bin", "up/secret.bin"])
def test_onnx_external_data_outside_the_model_folder_is_refused(location, tmp_path, capfd):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.eye(3, dtype=np.float32).tobytes())
    before = secret.stat().st_atime_ns
    folder = tmp_path / "repo" / "escape"
    folder.mkdir(parents=True)
    if location == "ABSOLUTE":
        location = str(secret)
    elif location == "link.bin":
        (folder / "link.bin").symlink_to(secret)  # a file symlinked out of the folder
    elif location == "up/secret.bin":
        (folder / "up").symlink_to(tmp_path)  # a folder symlinked out of the folder
    external_data_model(folder, location)
    assert_one_clear_line(folder, "escape", "model.onnx",
                          f"keeps its data at {location!r}, outside the model's folder; refused",
                          tmp_path, capfd)
    assert secret.stat().st_atime_ns == before  # never opened (atime moves on relatime mounts)


def test_onnx_external_data_inside_the_folder_serves(tmp_path):
    folder = tmp_path / "inside"
    external_data_model(folder, "weights/w.bin")
    (folder / "weights").mkdir()
    (folder / "weights" / "w.bin").write_bytes((np.eye(3, dtype=np.float32) * 10).tobytes())
    server = serve_in_process([str(folder)], tmp_path)
    try:
        response = server.client.post("/api/models/inside/predict", files={"image": ("r", RED)})
        assert response.status_code == 200
        assert response.json()["predictions"][0]["label"] == "red"
        assert server.client.get("/api/models/inside").json()["parameters"] == 9
    finally:
        assert server.stop() == 0


def test_the_server_checks_an_onnx_file_once_for_all_its_workers(tmp_path):
    """The workers take the server's check (the parameters on the model's page) and never
    load the ``onnx`` package: it cost each worker 8 MB (benchmarks/memory.py)."""
    rgb_model(tmp_path / "rgb")
    server = serve_in_process([str(tmp_path / "rgb"), "--replicas", "2"], tmp_path)
    try:
        model = server.client.get("/api/models/rgb").json()
        assert (model["parameters"], model["workers_ready"]) == (9, 2)
        workers = children_of(os.getpid())
        assert len(workers) >= 2
        for pid in workers:
            maps = Path(f"/proc/{pid}/maps").read_text()
            assert "onnxruntime_pybind11_state" in maps and "onnx_cpp2py_export" not in maps
    finally:
        assert server.stop() == 0


def test_a_file_changed_after_the_servers_check_is_checked_again(tmp_path):
    spec = checked(load_repository(rgb_model(tmp_path / "rgb").parent)[0])
    assert spec.checked is not None and not spec.problem
    data = spec.path.read_bytes()
    spec.path.write_bytes(data[: len(data) // 2])  # swapped after the check, before a load
    with pytest.raises(ModelFileError, match=r"model\.onnx: not an ONNX model"):
        OnnxRuntime(spec)


@pytest.mark.slow
@pytest.mark.parametrize("archive", ["pickled_weight.pt2", "pickled_inputs.pt2"])
def test_pickles_in_an_exported_program_never_run(archive, torch_files, tmp_path, capfd):
    folder = tmp_path / "repo" / "exported"
    folder.mkdir(parents=True)
    shutil.copy(torch_files / archive, folder / "model.pt2")
    canary = torch_files / "CANARY"
    assert_one_clear_line(folder, "exported", "model.pt2",
                          "which can run code when loaded; load it only if you trust its "
                          "author, with --trust-model-code", tmp_path, capfd)
    assert not canary.exists()


def test_plain_exported_program_and_torchscript_serve(torch_files, tmp_path):
    repo = tmp_path / "repo"
    for name, file in (("script", "model.pt"), ("exported", "model.pt2")):
        (repo / name).mkdir(parents=True)
        shutil.copy(torch_files / file, repo / name / file)
        (repo / name / "labels.txt").write_text("red\ngreen\nblue\n")
    server = serve_in_process([str(repo), "--runtime", "native"], tmp_path, timeout=240)
    try:
        for name in ("script", "exported"):
            response = server.client.post(f"/api/models/{name}/predict",
                                          files={"image": ("r", RED)})
            assert response.status_code == 200, response.text
            assert len(response.json()["predictions"]) == 3
            assert response.json()["predictions"][0]["label"] == "red"
    finally:
        assert server.stop() == 0
    assert not (torch_files / "CANARY").exists()


# -- hot reload -----------------------------------------------------------------------------


def test_corrupt_replacement_and_corrupt_new_version_leave_the_old_one_serving(tmp_path):
    repo = tmp_path / "repo"
    rgb_model(repo / "colour" / "1")
    server = serve_in_process([str(repo), "--watch"], tmp_path)
    load = Load(server.url, "colour", clients=2)
    try:
        time.sleep(0.5)
        good = (repo / "colour" / "1" / "model.onnx").read_bytes()
        staged = repo / "colour" / "1" / "model.onnx.tmp"
        staged.write_bytes(good[: len(good) // 2])  # replaced (atomically) by a truncated copy
        staged.replace(repo / "colour" / "1" / "model.onnx")
        models = _wait_models(server, lambda m: m["colour"].get("update_error"))
        assert models["colour"]["update_error"].startswith(
            "version 1 failed to load: model.onnx: not an ONNX model")
        assert models["colour"]["state"] == "ready" and models["colour"]["version"] == "1"

        (repo / "colour" / "2").mkdir()  # a new version of random bytes
        (repo / "colour" / "2" / "model.onnx").write_bytes(np.random.default_rng(2).bytes(999))
        models = _wait_models(server, lambda m: (m["colour"].get("update_error") or "")
                              .startswith("version 2"))
        assert "model.onnx: not an ONNX model" in models["colour"]["update_error"]
        assert models["colour"]["version"] == "1"
        ready = server.client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["models"]["colour"]["update_error"].startswith(
            "version 2 failed to load: model.onnx: not an ONNX model")
        time.sleep(0.5)
    finally:
        load.stop()
        assert server.stop() == 0
    assert len(load.statuses) > 20, len(load.statuses)
    assert set(load.statuses) == {200}, sorted(set(load.statuses))
    assert set(load.versions) == {"1"}


def _wait_models(server, check, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        models = {m["name"]: m for m in server.client.get("/api/models").json()["models"]}
        if check(models):
            return models
        time.sleep(0.1)
    raise AssertionError(f"not seen:\n{server.log()}")


# -- requests never choose a model file -----------------------------------------------------


LOAD_ATTEMPTS = [
    ("POST", "/v2/repository/models/../../etc/load"),
    ("POST", "/v2/repository/models/%2e%2e%2f%2e%2e%2fcanary/load"),
    ("POST", "/v2/repository/models/rgb/load"),
    ("POST", "/v2/repository/models/canary/load"),
    ("POST", "/v2/repository/models/rgb/unload"),
    ("POST", "/v2/models/canary/infer"),
    ("GET", "/v1/models/canary"),
    ("GET", "/api/models/..%2f..%2fcanary"),
]


def test_no_request_makes_the_server_load_a_model_from_a_path(rgb_repo, tmp_path):
    canary = tmp_path / "canary"
    rgb_model(canary)  # a valid model a client would like loaded
    body = json.dumps({"parameters": {"config": json.dumps({"backend": "onnxruntime"}),
                                      "file:1/model.onnx": "AAAA", "path": str(canary)}})
    server = serve_in_process([str(rgb_repo)], tmp_path)
    try:
        before = server.client.get("/api/models").json()
        workers = sorted(server.worker_pids())
        target = urlsplit(server.url)
        for method, path in LOAD_ATTEMPTS:
            connection = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
            connection.request(method, path, body=body if method == "POST" else None,
                               headers={"Content-Type": "application/json"})
            status = connection.getresponse().status
            connection.close()
            assert 400 <= status < 500, (method, path, status)
        assert server.client.get("/api/models").json() == before
        assert [m["name"] for m in before["models"]] == ["rgb"]
        assert sorted(server.worker_pids()) == workers  # no worker started for anything else
        assert str(canary) not in server.log()
        assert server.client.post("/api/models/rgb/predict",
                                  files={"image": ("r", RED)}).status_code == 200
    finally:
        assert server.stop() == 0
