"""Model versions side by side: two real versions of one model that answer differently, both
served at once, each addressable on every protocol (native, KServe V2 REST and gRPC, TF
Serving), with labels, readiness per version, and the version policy's start-up errors."""

from __future__ import annotations

import subprocess
import time

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from modelhost.repository import RepositoryError, load_repository
from modelhost.routing import choose

from ..support import free_port, rgb_model, serve_in_process, solid

RED = (255, 0, 0)
SWAPPED = (2, 0, 1)  # version 2's weights: logits (blue, red, green), so red → "green"
POLICY = """
[versions]
serve = "all"
stable = "1"
canary = "2"
replicas = {"2" = 1}
"""


def two_versions(folder, toml: str = POLICY):
    """Model ``m``: version 1 answers the dominant colour, version 2 a permuted one."""
    rgb_model(folder / "1")
    rgb_model(folder / "2", order=SWAPPED)
    (folder / "modelhost.toml").write_text(toml)
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("versions")
    two_versions(tmp / "repo" / "m")
    rgb_model(tmp / "repo" / "solo")
    port = free_port()
    live = serve_in_process([str(tmp / "repo"), "--grpc-port", str(port)], tmp)
    live.grpc = f"127.0.0.1:{port}"  # type: ignore[attr-defined]
    yield live
    assert live.stop() == 0


def red_row() -> list:
    """One NCHW 9×9 row, all red (1.0 in channel 0)."""
    row = np.zeros((3, 9, 9), np.float32)
    row[0] = 1.0
    return row.tolist()


def native(server, path: str):
    return server.client.post(path, content=solid(RED), headers={"Content-Type": "image/png"})


def top(response) -> str:
    assert response.status_code == 200, response.text
    return response.json()["predictions"][0]["label"]


# -- what is served ----------------------------------------------------------------------------

def test_every_served_version_is_listed_with_its_state(server):
    body = server.client.get("/api/models/m").json()
    assert body["version"] == "2" and body["versions"] == ["1", "2"]
    assert [(v["version"], v["state"], v["workers_ready"]) for v in body["served_versions"]] \
        == [("1", "ready", 1), ("2", "ready", 1)]
    assert body["routing"] == {"default": "2", "labels": {"stable": "1", "canary": "2"},
                               "split": {}, "sticky": False, "shadow": None}
    solo = server.client.get("/api/models/solo").json()
    assert [v["version"] for v in solo["served_versions"]] == ["1"]


def test_readiness_reports_each_version(server):
    ready = server.client.get("/readyz")
    assert ready.status_code == 200
    versions = ready.json()["models"]["m"]["versions"]
    assert {v: (h["state"], h["workers_ready"]) for v, h in versions.items()} == {
        "1": ("ready", 1), "2": ("ready", 1)}
    assert "versions" not in ready.json()["models"]["solo"]


def test_each_version_has_its_own_workers_and_reports_their_memory(server):
    versions = server.core.registry.versions("m")
    pids = {v: set(m.pool.pids()) for v, m in versions.items()}
    assert all(pids.values()) and not pids["1"] & pids["2"]
    assert versions["1"].batcher is not versions["2"].batcher
    listed = server.client.get("/api/models/m").json()["served_versions"]
    for entry in listed:  # against ps's own reading of the same processes
        ps = subprocess.run(["ps", "-o", "rss=", "-p", ",".join(map(str, pids[entry["version"]]))],
                            capture_output=True, text=True, check=True)
        expected = sum(int(v) for v in ps.stdout.split()) / 1024
        assert entry["workers_rss_mb"] == pytest.approx(expected, rel=0.1)
        assert entry["workers_rss_mb"] > 20  # ONNX Runtime and the model, at least


# -- addressing on every protocol -------------------------------------------------------------

def test_native_versions_and_labels(server):
    one = native(server, "/api/models/m/versions/1/predict")
    assert top(one) == "red" and one.json()["version"] == "1"
    assert one.headers["x-model-version"] == "1"
    two = native(server, "/api/models/m/versions/2/predict")
    assert top(two) == "green" and two.headers["x-model-version"] == "2"
    assert top(native(server, "/api/models/m/labels/stable/predict")) == "red"
    assert top(native(server, "/api/models/m/labels/canary/predict")) == "green"
    assert top(native(server, "/api/models/m/labels/latest/predict")) == "green"
    default = native(server, "/api/models/m/predict")  # no version: the default (highest)
    assert top(default) == "green" and default.headers["x-model-version"] == "2"


@pytest.mark.parametrize("path", ["/api/models/m/versions/3/predict",
                                  "/api/models/m/labels/beta/predict",
                                  "/api/models/nope/versions/1/predict"])
def test_native_unknown_version_or_label_is_404(server, path):
    response = native(server, path)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_v2_rest_versions(server):
    c = server.client
    body = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3, 9, 9],
                        "data": red_row()}]}
    one = c.post("/v2/models/m/versions/1/infer", json=body).json()
    two = c.post("/v2/models/m/versions/2/infer", json=body).json()
    assert (one["model_version"], one["outputs"][0]["data"]) == ("1", [10.0, 0.0, 0.0])
    assert (two["model_version"], two["outputs"][0]["data"]) == ("2", [0.0, 10.0, 0.0])
    assert c.get("/v2/models/m").json()["versions"] == ["1", "2"]
    assert c.get("/v2/models/m/versions/1").json()["versions"] == ["1", "2"]
    for version in ("1", "2"):
        ready = c.get(f"/v2/models/m/versions/{version}/ready")
        assert ready.status_code == 200 and ready.json() == {"name": "m", "ready": True}
    missing = c.post("/v2/models/m/versions/3/infer", json=body)
    assert missing.status_code == 404 and "not served" in missing.json()["error"]
    index = c.post("/v2/repository/index", json={}).json()
    assert [(e["name"], e["version"], e["state"]) for e in index] == [
        ("m", "1", "READY"), ("m", "2", "READY"), ("solo", "1", "READY")]


def test_tfserving_versions_and_labels(server):
    c = server.client
    status = c.get("/v1/models/m").json()["model_version_status"]
    assert [(s["version"], s["state"]) for s in status] == [("1", "AVAILABLE"),
                                                            ("2", "AVAILABLE")]
    assert [s["version"] for s in
            c.get("/v1/models/m/labels/stable").json()["model_version_status"]] == ["1"]
    body = {"instances": [red_row()]}
    one = c.post("/v1/models/m/versions/1:predict", json=body)
    assert one.json() == {"predictions": [[10.0, 0.0, 0.0]]}
    assert one.headers["x-model-version"] == "1"
    canary = c.post("/v1/models/m/labels/canary:predict", json=body)
    assert canary.json() == {"predictions": [[0.0, 10.0, 0.0]]}
    assert canary.headers["x-model-version"] == "2"
    meta = c.get("/v1/models/m/labels/stable/metadata").json()
    assert meta["model_spec"]["version"] == "1"
    unknown = c.post("/v1/models/m/labels/beta:predict", json=body)
    assert unknown.status_code == 404 and "beta" in unknown.json()["error"]
    assert "Specific(m, 3)" in c.get("/v1/models/m/versions/3").json()["error"]


def test_grpc_model_version(server):
    rows = np.asarray([red_row()], np.float32)
    with triton.InferenceServerClient(server.grpc) as client:
        outputs = {}
        for version in ("1", "2"):
            tensor = triton.InferInput("image", list(rows.shape), "FP32")
            tensor.set_data_from_numpy(rows)
            result = client.infer("m", [tensor], model_version=version)
            assert result.get_response().model_version == version
            outputs[version] = result.as_numpy("logits").tolist()
        assert outputs == {"1": [[10.0, 0.0, 0.0]], "2": [[0.0, 10.0, 0.0]]}
        assert client.is_model_ready("m", "1") and client.is_model_ready("m", "2")
        assert client.get_model_metadata("m", as_json=True)["versions"] == ["1", "2"]
        tensor = triton.InferInput("image", list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows)
        with pytest.raises(InferenceServerException, match="not served"):
            client.infer("m", [tensor], model_version="3")


# -- the policy in modelhost.toml --------------------------------------------------------------

def test_latest_n_serves_the_highest_n(tmp_path):
    for version in ("1", "2", "10"):
        rgb_model(tmp_path / "m" / version)
    (tmp_path / "m" / "modelhost.toml").write_text('[versions]\nserve = "latest:2"\n')
    [spec] = load_repository(tmp_path / "m")
    assert spec.version == "10" and [o.version for o in spec.others] == ["2"]
    assert spec.policy is not None and spec.policy.served == ("2", "10")
    assert spec.others[0].path == tmp_path / "m" / "2" / "model.onnx"


def test_per_version_replicas(tmp_path):
    two_versions(tmp_path / "m", '[versions]\nserve = ["1", "2"]\nreplicas = {"1" = 3}\n')
    [spec] = load_repository(tmp_path / "m")
    assert (spec.others[0].config.replicas, spec.config.replicas) == (3, 1)


@pytest.mark.parametrize(("toml", "message"), [
    ('serve = ["1", "4"]', "versions.serve = '4': not one of the version folders"),
    ('serve = "newest"', "versions.serve = 'newest': expected"),
    ('serve = "latest:0"', 'expected "latest:N" with N ≥ 1'),
    ('serve = "all"\nsplit = {"1" = 70, "2" = 20}', "the weights add up to 90, not 100"),
    ('serve = "all"\nsplit = {"1" = 50, "3" = 50}', "versions.split = '3': not one of the served"),
    ('stable = "1"', "versions.stable = '1': not one of the served versions ['2']"),
    ('"9lives" = "2"', "not a label name"),
    ('latest = "1"', "not a label name"),
    ('serve = "all"\nshadow = "2"', "the default version cannot shadow itself"),
    ('sticky = "yes"', "versions.sticky = 'yes': expected true or false"),
])
def test_policy_errors_name_the_file_and_key(tmp_path, toml, message):
    two_versions(tmp_path / "m", f"[versions]\n{toml}\n")
    with pytest.raises(RepositoryError) as caught:
        load_repository(tmp_path / "m")
    assert str(tmp_path / "m" / "modelhost.toml") in str(caught.value)
    assert message in str(caught.value)


def test_versions_section_only_beside_version_folders(tmp_path):
    rgb_model(tmp_path / "flat", toml='[versions]\nserve = "all"\n')
    with pytest.raises(RepositoryError, match=r"\[versions\] belongs in the modelhost.toml"):
        load_repository(tmp_path / "flat")


def test_default_version_answers_unnamed_requests(tmp_path):
    two_versions(tmp_path / "m", '[versions]\nserve = "all"\ndefault = "1"\n')
    [spec] = load_repository(tmp_path / "m")
    assert spec.policy is not None and spec.policy.default == "1"
    assert choose(spec.policy, None) == "1" and choose(spec.policy, "anyone") == "1"


def test_a_version_that_fails_leaves_the_others_serving(tmp_path):
    """With --keep-going (as for whole models), the broken version is reported and the
    others answer; without it, the start fails naming the version."""
    two_versions(tmp_path / "repo" / "m", '[versions]\nserve = "all"\ndefault = "1"\n')
    (tmp_path / "repo" / "m" / "2" / "model.onnx").write_bytes(b"not a model")
    live = serve_in_process([str(tmp_path / "repo"), "--keep-going"], tmp_path,
                            wait_ready=False)
    try:
        deadline = time.monotonic() + 60
        while any(v["state"] == "loading" for v in
                  live.client.get("/api/models/m").json()["served_versions"]) \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        served = live.client.get("/api/models/m").json()["served_versions"]
        assert [(v["version"], v["state"]) for v in served] == [("1", "ready"), ("2", "failed")]
        assert served[1]["error"]
        assert top(native(live, "/api/models/m/predict")) == "red"  # the default, 1
        broken = native(live, "/api/models/m/versions/2/predict")
        assert broken.status_code == 503 and broken.json()["error"]["code"] == "not_ready"
        ready = live.client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["models"]["m"]["versions"]["2"]["state"] == "failed"
        status = live.client.get("/v1/models/m").json()["model_version_status"]
        assert [(s["version"], s["state"]) for s in status] == [("1", "AVAILABLE"),
                                                                ("2", "END")]
    finally:
        assert live.stop() == 0

    failing = serve_in_process([str(tmp_path / "repo")], tmp_path, wait_ready=False)
    deadline = time.monotonic() + 60
    while failing.alive and time.monotonic() < deadline:
        time.sleep(0.1)
    assert failing.stop() == 1
    line = next(line for line in failing.wait_for_log("failed to load").splitlines()
                if "failed to load" in line)
    assert "model m (" in line and "/2/model.onnx) version 2 failed to load" in line
