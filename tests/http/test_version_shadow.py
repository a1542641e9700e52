"""Shadow traffic: requests that name no version are answered by the default version and also
run on the shadow version in the background; both predictions are recorded (the shadow's
marked with the answered prediction's id, never returned, never open to feedback), and under
load every answered prediction is either shadowed or counted as a dropped shadow run."""

from __future__ import annotations

import concurrent.futures
import os
import re
import time

import numpy as np
import pytest
import sqlalchemy as sa

from ..support import serve_in_process, solid, two_versions

SHADOW = '[versions]\nserve = "all"\ndefault = "1"\nshadow = "2"\n'


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shadow")
    two_versions(tmp / "repo" / "m", SHADOW)  # version 2: red → "green"
    db = tmp / "predictions.db"
    live = serve_in_process([str(tmp / "repo"), "--db", f"sqlite:///{db}"], tmp)
    live.db = sa.create_engine(f"sqlite:///{db}")  # type: ignore[attr-defined]
    yield live
    assert live.stop() == 0


def rows(server, ids: set[str], shadows: int, timeout: float = 10) -> list[dict]:
    """Every stored prediction, once ``ids`` and ``shadows`` shadow predictions are stored
    (records reach the database from the journal within a fraction of a second)."""
    deadline = time.monotonic() + timeout
    while True:
        with server.db.connect() as conn:
            found = [r._asdict() for r in conn.execute(sa.text(
                "SELECT id, version, top1, shadow_of FROM predictions"))]
        if (ids <= {r["id"] for r in found}
                and sum(1 for r in found if r["shadow_of"]) >= shadows) \
                or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def dropped(server) -> float:
    text = server.client.get("/metrics").text
    match = re.search(r'^modelhost_shadow_dropped_total\{model="m"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def red_tensor() -> dict:
    row = np.zeros((1, 3, 9, 9), np.float32)
    row[0, 0] = 1.0
    return {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3, 9, 9],
                        "data": row.flatten().tolist()}]}


def test_shadow_records_both_and_answers_from_the_default(server):
    c, answered = server.client, set()
    for _ in range(5):
        response = c.post("/api/models/m/predict", content=solid((255, 0, 0)),
                          headers={"Content-Type": "image/png"})
        body = response.json()
        assert (body["version"], body["predictions"][0]["label"]) == ("1", "red")
        answered.add(body["id"])
    for _ in range(3):
        body = c.post("/v2/models/m/infer", json=red_tensor()).json()
        assert (body["model_version"], body["outputs"][0]["data"]) == ("1", [10.0, 0.0, 0.0])
        answered.add(body["parameters"]["prediction_id"])
    named = c.post("/api/models/m/versions/2/predict", content=solid((255, 0, 0)),
                   headers={"Content-Type": "image/png"}).json()  # named: not shadowed
    assert named["version"] == "2"
    stored = rows(server, answered | {named["id"]}, len(answered))
    shadows = [r for r in stored if r["shadow_of"]]
    assert {r["shadow_of"] for r in shadows} == answered and len(shadows) == len(answered)
    assert {(r["version"], r["top1"]) for r in shadows} == {("2", "green")}  # its own answer
    assert {(r["version"], r["top1"]) for r in stored if r["id"] in answered} == {("1", "red")}
    # a shadow's id was never returned: feedback cannot name it, accuracy does not count it
    feedback = c.post(f"/api/predictions/{shadows[0]['id']}/feedback", json={"label": "red"})
    assert feedback.status_code == 404 and feedback.json()["error"]["code"] == "not_found"
    accuracy = c.get("/api/models/m/accuracy").json()
    assert accuracy["predictions"] == len(answered) + 1


def test_the_shadow_versions_workers_yield_the_cpu(server):
    """The shadow's work must not slow the answers: its workers run at the lowest CPU priority
    (nice + 19 over the server's, in every thread), the answering version's at the workers'
    usual one (+ 5, so that the HTTP process gets a core first), and a routing change moves
    the priorities with the roles."""
    base = os.getpriority(os.PRIO_PROCESS, 0)
    worker, shadow = min(base + 5, 19), min(base + 19, 19)

    def niceness() -> dict[str, set[int]]:
        """Per version, the niceness of every thread of its workers (on Linux each thread
        has its own: the runtime's compute threads and the decode thread count too)."""
        versions = server.core.registry.versions("m")
        return {v: {os.getpriority(os.PRIO_PROCESS, int(tid)) for pid in m.pool.pids()
                    for tid in os.listdir(f"/proc/{pid}/task")}
                for v, m in versions.items()}

    assert niceness() == {"1": {worker}, "2": {shadow}}
    client = server.client
    try:
        assert client.put("/api/models/m/routing", json={"shadow": None}).status_code == 200
        assert niceness() == {"1": {worker}, "2": {worker}}  # no shadow: both answer
    finally:
        assert client.put("/api/models/m/routing", json={"shadow": "2"}).status_code == 200
    assert niceness() == {"1": {worker}, "2": {shadow}}


@pytest.fixture(scope="module")
def small_queue(tmp_path_factory):
    """The same model behind queues of 4 places: shadow runs stop at 2 queued."""
    tmp = tmp_path_factory.mktemp("shadow_queue")
    two_versions(tmp / "repo" / "m", SHADOW)
    db = tmp / "predictions.db"
    live = serve_in_process([str(tmp / "repo"), "--db", f"sqlite:///{db}", "--max-queue", "4"],
                            tmp)
    live.db = sa.create_engine(f"sqlite:///{db}")  # type: ignore[attr-defined]
    yield live
    assert live.stop() == 0


def test_under_load_shadow_runs_are_dropped_first(small_queue):
    """8 clients on queues of 4: shadow runs are dropped (counted) from half full on, and
    every answered prediction was either shadowed or its shadow run counted as dropped."""
    server, before = small_queue, dropped(small_queue)

    def one(_):
        response = server.client.post("/v2/models/m/infer", json=red_tensor())
        if response.status_code == 503:  # a full queue refuses answered traffic too
            assert response.json()["error"] and response.headers["retry-after"]
            return None
        assert response.status_code == 200, response.text
        assert response.json()["model_version"] == "1"
        return response.json()["parameters"]["prediction_id"]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answered = {i for i in pool.map(one, range(300)) if i}
    deadline = time.monotonic() + 10
    while True:
        with server.db.connect() as conn:
            shadowed = {r[0] for r in conn.execute(sa.text(
                "SELECT shadow_of FROM predictions WHERE shadow_of IS NOT NULL"))}
        drops = dropped(server) - before
        if len(shadowed & answered) + drops >= len(answered) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(answered) > 150 and drops > 0
    assert len(shadowed & answered) + drops == len(answered)
