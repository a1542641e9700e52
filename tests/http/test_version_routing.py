"""Routing changed at run time (PUT /api/models/{m}/routing and `modelhost route`): checked
like [versions] (422 naming the key), API key required when the server has keys, recorded with
time and key name in the database, and made under load from 4 client threads with zero
non-200 answers."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from modelhost.access.keys import add_key
from modelhost.cli import app

from ..support import serve_in_process, solid, two_versions

POLICY = '[versions]\nserve = "all"\nstable = "1"\n'
RED = solid((255, 0, 0))
ANSWER = {"1": "red", "2": "green"}  # version 2's weights are permuted


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("routing")
    two_versions(tmp / "repo" / "m", POLICY)
    keys = tmp / "keys.txt"
    secret = add_key(keys, "ops")
    db = tmp / "predictions.db"
    live = serve_in_process([str(tmp / "repo"), "--api-keys", str(keys),
                             "--db", f"sqlite:///{db}"], tmp)
    live.client.headers["X-API-Key"] = secret
    live.secret, live.db = secret, sa.create_engine(f"sqlite:///{db}")  # type: ignore[attr-defined]
    yield live
    assert live.stop() == 0


def put(server, body):
    return server.client.put("/api/models/m/routing", json=body)


def route(server, *args: str) -> str:
    result = CliRunner().invoke(app, ["route", "m", "--url", server.url,
                                      "--api-key", server.secret, *args])
    assert result.exit_code == 0, result.output
    return result.output


def unnamed(server) -> str:
    response = server.client.post("/api/models/m/predict", content=RED,
                                  headers={"Content-Type": "image/png"})
    assert response.status_code == 200, response.text
    version = response.headers["x-model-version"]
    assert response.json()["predictions"][0]["label"] == ANSWER[version]
    return version


@pytest.mark.parametrize(("body", "status", "text"), [
    ({"split": {"1": 60, "2": 30}}, 422, "the weights add up to 90, not 100"),
    ({"split": {"1": 50, "3": 50}}, 422, "split = '3': not one of the served versions"),
    ({"shadow": "2"}, 422, "the default version cannot shadow itself"),
    ({"promote": "7"}, 422, "promote = '7'"),
    ({"promote": "1", "split": {}}, 422, "promote and rollback go alone"),
    ({"labels": {"x": "1"}}, 422, "unknown: ['labels']"),
    ([1, 2], 422, "send a JSON object"),
])
def test_bad_changes_are_refused_with_the_key(server, body, status, text):
    response = put(server, body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == "invalid_parameter"
    assert text in response.json()["error"]["message"]


def test_a_key_is_required_and_bad_json_is_400(server):
    anonymous = server.client.put("/api/models/m/routing", json={"promote": "1"},
                                  headers={"X-API-Key": ""})
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "unauthorized"
    bad = server.client.put("/api/models/m/routing", content=b"{nope",
                            headers={"Content-Type": "application/json"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "malformed_request"
    missing = server.client.put("/api/models/nope/routing", json={"promote": "1"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_changes_under_load_fail_no_request_and_are_recorded(server):
    statuses: list[int] = []
    stop = threading.Event()

    def client():
        while not stop.is_set():
            response = server.client.post("/api/models/m/predict", content=RED,
                                          headers={"Content-Type": "image/png"})
            statuses.append(response.status_code)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.3)
        assert put(server, {"split": {"1": 50, "2": 50}}).status_code == 200
        time.sleep(0.3)
        assert '"action": "promote"' in route(server, "--promote", "1")
        time.sleep(0.3)
        route(server, "--split", "2=10")  # the other 90 to the default, 1
        time.sleep(0.3)
        route(server, "--rollback")  # back to everything on 1
        time.sleep(0.3)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert len(statuses) > 50 and set(statuses) == {200}
    assert {unnamed(server) for _ in range(20)} == {"1"}  # promoted, the split rolled back
    body = server.client.get("/api/models/m/routing").json()
    assert body["routing"] == {"default": "1", "labels": {"stable": "1"}, "split": {},
                               "sticky": False, "shadow": None}
    assert [c["action"] for c in body["changes"][:4]] == ["rollback", "set", "promote", "set"]
    assert body["changes"][2]["routing"]["default"] == "1"
    assert body["changes"][1]["routing"]["split"] == {"1": 90, "2": 10}
    with server.db.connect() as conn:
        stored = conn.execute(sa.text(
            "SELECT action, client, created_at FROM routing_changes ORDER BY id")).all()
    assert [(a, c) for a, c, _ in stored][-4:] == [("set", "ops"), ("promote", "ops"),
                                                   ("set", "ops"), ("rollback", "ops")]
    assert all(created for _, _, created in stored)


def test_promote_and_rollback_change_what_answers(server):
    route(server, "--promote", "2")
    assert {unnamed(server) for _ in range(10)} == {"2"}
    route(server, "--rollback")
    assert {unnamed(server) for _ in range(10)} == {"1"}
    assert server.client.get("/api/models/m").json()["routing"]["default"] == "1"
