"""``serve --watch``: a new version folder, a broken version, a replaced file and a removed model
are noticed while clients keep sending requests, and no request fails."""

from __future__ import annotations

import shutil
import threading
import time

import httpx

from ..support import rgb_model, serve_in_process, solid

RED = solid((250, 10, 10))


class Load:
    """Clients posting the same red image in a loop from threads; every status and version
    answered is kept."""

    def __init__(self, url: str, model: str, clients: int = 4) -> None:
        self.statuses: list[int] = []
        self.versions: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(url, model))
                         for _ in range(clients)]
        for thread in self._threads:
            thread.start()

    def _run(self, url: str, model: str) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            while not self._stop.is_set():
                response = client.post(f"/api/models/{model}/predict",
                                       files={"image": ("r.png", RED)})
                self.statuses.append(response.status_code)
                if response.status_code == 200:
                    self.versions.append(response.json()["version"])

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


def _wait(server, check, what: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = server.client.get("/api/models").json()
        models = {m["name"]: m for m in body["models"]}
        if check(models):
            return models
        time.sleep(0.1)
    raise AssertionError(f"{what} did not happen:\n{server.log()}")


def test_versions_swap_under_load_without_failed_requests(tmp_path):
    repo = tmp_path / "repo"
    rgb_model(repo / "colour" / "1")
    rgb_model(repo / "other")
    server = serve_in_process([str(repo), "--watch"], tmp_path)
    load = Load(server.url, "colour")
    try:
        time.sleep(1)
        # version 2 names the classes differently: its answers are recognisable
        rgb_model(repo / "colour" / "2", labels=("rouge", "vert", "bleu"))
        _wait(server, lambda m: m["colour"]["version"] == "2", "the swap to version 2")
        time.sleep(1)

        # version 3 is broken: version 2 keeps serving and the failure is reported
        (repo / "colour" / "3").mkdir()
        (repo / "colour" / "3" / "model.onnx").write_bytes(b"not a model")
        models = _wait(server, lambda m: m["colour"]["update_error"], "the failed update")
        assert models["colour"]["version"] == "2"
        assert models["colour"]["state"] == "ready"
        assert models["colour"]["update_error"].startswith("version 3 failed to load:")
        ready = server.client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["models"]["colour"]["update_error"].startswith("version 3 failed")
        time.sleep(1)

        # a removed model: 404 from then on
        shutil.rmtree(repo / "other")
        _wait(server, lambda m: "other" not in m, "the removal")
        response = server.client.post("/api/models/other/predict",
                                      files={"image": ("r.png", RED)})
        assert response.status_code == 404
    finally:
        load.stop()
        assert server.stop() == 0
    assert len(load.statuses) > 50, len(load.statuses)
    assert set(load.statuses) == {200}, sorted(set(load.statuses))
    assert "1" in load.versions and "2" in load.versions
    assert load.versions.index("2") > load.versions.index("1")
    last_one = max(i for i, v in enumerate(load.versions) if v == "1")
    assert set(load.versions[last_one + 1:]) == {"2"}  # once switched, never back


def test_replaced_model_file_is_reloaded(tmp_path):
    repo = tmp_path / "repo"
    rgb_model(repo / "colour")
    server = serve_in_process([str(repo), "--watch"], tmp_path)
    try:
        assert server.client.get("/api/models/colour").json()["input"]["width"] == 9
        replacement = tmp_path / "new"
        rgb_model(replacement, size=16)  # the same model with a 16×16 input
        shutil.copy(replacement / "model.onnx", repo / "colour" / "model.onnx.tmp")
        (repo / "colour" / "model.onnx.tmp").replace(repo / "colour" / "model.onnx")
        _wait(server, lambda m: m["colour"]["input"]["width"] == 16, "the reload")
        response = server.client.post("/api/models/colour/predict",
                                      files={"image": ("r.png", RED)})
        assert response.json()["predictions"][0]["label"] == "red"
    finally:
        assert server.stop() == 0
