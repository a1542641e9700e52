"""V2 repository load/unload through a real server: only the repository's models, by name;
off (403) unless ``--model-control``; a reload reads the files again without failing a
request; a failed load leaves the server as it was; and Triton's own client drives it."""

from __future__ import annotations

import base64
import threading

import httpx
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from ..support import rgb_model, serve_in_process, solid
from .test_v2 import v2_error

RED = (250, 10, 10)


@pytest.fixture
def controlled(tmp_path):
    """A server with --model-control over a repository of ``rgb`` and ``other``."""
    repo = tmp_path / "repo"
    rgb_model(repo / "rgb")
    rgb_model(repo / "other")
    server = serve_in_process([str(repo), "--model-control"], tmp_path)
    server.repo = repo  # type: ignore[attr-defined]
    yield server
    assert server.stop() == 0


def label(server, model: str = "rgb") -> str:
    answer = server.client.post(f"/api/models/{model}/predict", content=solid(RED),
                                headers={"Content-Type": "image/png"})
    assert answer.status_code == 200, answer.text
    return answer.json()["predictions"][0]["label"]


def index(server, **body) -> dict[str, tuple[str, str]]:
    entries = server.client.post("/v2/repository/index", json=body).json()
    return {e["name"]: (e["state"], e["reason"]) for e in entries}


def test_off_unless_asked_for(repo_server):
    c = repo_server.client
    for action in ("load", "unload"):
        refused = c.post(f"/v2/repository/models/rgb/{action}")
        assert "--model-control" in v2_error(refused, 403)
        assert refused.headers["x-error-code"] == "forbidden"
    assert c.get("/v2/models/rgb/ready").status_code == 200


def test_unload_then_load_again(controlled):
    c = controlled.client
    assert label(controlled) == "red"
    unloaded = c.post("/v2/repository/models/rgb/unload")
    assert unloaded.status_code == 200 and unloaded.json() == {"name": "rgb", "unload": True}
    assert c.get("/v2/models").json() == {"models": ["other"]}
    assert "rgb" in v2_error(c.get("/v2/models/rgb/ready"), 404)
    gone = c.post("/api/models/rgb/predict", content=solid(RED),
                  headers={"Content-Type": "image/png"})
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"
    assert c.get("/readyz").status_code == 200  # ready: the unloaded model is not awaited
    assert index(controlled) == {"other": ("READY", ""), "rgb": ("UNAVAILABLE", "unloaded")}
    assert index(controlled, ready=True) == {"other": ("READY", "")}
    assert c.post("/v2/repository/models/rgb/unload", json={}).status_code == 200  # idempotent

    loaded = c.post("/v2/repository/models/rgb/load", json={"parameters": {}})
    assert loaded.status_code == 200 and loaded.json() == {"name": "rgb", "load": True}
    assert label(controlled) == "red"
    assert index(controlled) == {"other": ("READY", ""), "rgb": ("READY", "")}
    assert label(controlled, "other") == "red"  # the other model never stopped


def test_load_of_a_served_model_reloads_its_files_without_failing_requests(controlled):
    (controlled.repo / "rgb" / "labels.txt").write_text("rouge\nvert\nbleu\n")
    assert label(controlled) == "red"  # no --watch: nothing changes until asked
    statuses: list[int] = []
    stop = threading.Event()

    def predict() -> None:
        with httpx.Client(base_url=controlled.url, timeout=30) as client:
            while not stop.is_set():
                statuses.append(client.post("/api/models/rgb/predict", content=solid(RED),
                                            headers={"Content-Type": "image/png"}).status_code)

    thread = threading.Thread(target=predict)
    thread.start()
    try:
        assert controlled.client.post("/v2/repository/models/rgb/load").status_code == 200
    finally:
        stop.set()
        thread.join(30)
    assert label(controlled) == "rouge"
    assert statuses and set(statuses) == {200}, statuses


def test_only_the_repositorys_models_by_name(controlled, tmp_path):
    c = controlled.client
    outside = rgb_model(tmp_path / "outside")  # a real model, but not in the repository
    for name in ("nope", "outside", str(outside), "..%2Foutside"):
        for action in ("load", "unload"):
            answer = c.post(f"/v2/repository/models/{name}/{action}")
            assert answer.status_code == 404, (name, action, answer.text)
    model = base64.b64encode(outside.read_bytes()).decode()
    for parameters in ({"config": '{"backend": "onnxruntime"}'},
                       {"file:1/model.onnx": model}):
        refused = c.post("/v2/repository/models/nope/load", json={"parameters": parameters})
        assert "repository only" in v2_error(refused, 400)
    assert "not valid JSON" in v2_error(c.post("/v2/repository/models/rgb/load",
                                               content=b"{", headers={"Content-Type":
                                                                      "application/json"}),
                                        400)
    assert sorted(c.get("/v2/models").json()["models"]) == ["other", "rgb"]


def test_a_failed_load_leaves_the_server_as_it_was(controlled):
    c = controlled.client
    (controlled.repo / "broken").mkdir()
    (controlled.repo / "broken" / "model.onnx").write_bytes(b"not a model")
    failed = c.post("/v2/repository/models/broken/load")
    assert "broken" in v2_error(failed, 500) and failed.headers["x-error-code"] == "model_failed"
    assert sorted(c.get("/v2/models").json()["models"]) == ["other", "rgb"]
    assert c.get("/readyz").status_code == 200
    assert index(controlled)["broken"] == ("UNAVAILABLE", "unloaded")

    (controlled.repo / "rgb" / "model.onnx").write_bytes(b"broken too")  # a bad new version
    failed = c.post("/v2/repository/models/rgb/load")
    assert "rgb" in v2_error(failed, 500)
    assert label(controlled) == "red"  # the loaded version keeps serving
    assert "failed to load" in c.get("/readyz").json()["models"]["rgb"]["update_error"]


def test_tritonclient_loads_and_unloads(controlled):
    with triton.InferenceServerClient(controlled.url.removeprefix("http://")) as client:
        client.unload_model("rgb")
        assert not client.is_model_ready("rgb")
        states = {m["name"]: m["state"] for m in client.get_model_repository_index()}
        assert states == {"other": "READY", "rgb": "UNAVAILABLE"}
        client.load_model("rgb")
        assert client.is_model_ready("rgb")
        with pytest.raises(InferenceServerException, match="not in the repository"):
            client.load_model("nope")
        with pytest.raises(InferenceServerException, match="repository only"):
            client.load_model("rgb", config='{"backend": "onnxruntime"}')
    assert label(controlled) == "red"



def test_a_reload_asking_for_an_unverified_int8_file_is_refused(controlled):
    """``precision = "int8"`` added to a served model's modelhost.toml with no ``optimize`` run:
    the load is refused with the reason (no server path in it) and the FP32 model keeps
    serving."""
    c = controlled.client
    (controlled.repo / "rgb" / "modelhost.toml").write_text('[runtime]\nprecision = "int8"\n')
    failed = c.post("/v2/repository/models/rgb/load")
    message = v2_error(failed, 500)
    assert failed.headers["x-error-code"] == "model_failed"
    assert "optimize.json is missing" in message and "modelhost optimize" in message
    assert str(controlled.repo) not in message
    assert label(controlled) == "red"
    assert c.get("/api/models/rgb").json()["precision"] == "fp32"
