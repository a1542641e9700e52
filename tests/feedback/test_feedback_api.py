"""Feedback through the live server, on SQLite and on PostgreSQL: what is stored, what is
refused, and the accuracy the API then reports."""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, select

from modelhost.feedback.schema import feedback, predictions

from ..support import serve_in_process, solid

RED, GREEN, BLUE = (250, 10, 10), (10, 250, 10), (10, 10, 250)


@pytest.fixture
def server(model_repo, db_url, tmp_path):
    server = serve_in_process([str(model_repo), "--db", db_url], tmp_path)
    server.db_url = db_url  # type: ignore[attr-defined]
    yield server
    assert server.stop() == 0


def predict(server, colour, **params) -> dict:
    response = server.client.post("/api/models/rgb/predict", content=solid(colour),
                                  headers={"Content-Type": "image/png"}, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def send(server, prediction_id: str, body) -> tuple[int, dict]:
    response = server.client.post(f"/api/predictions/{prediction_id}/feedback", json=body)
    return response.status_code, response.json()


def rows(db_url: str, table) -> list[dict]:
    engine = create_engine(db_url)
    with engine.connect() as conn:
        found = [r._asdict() for r in conn.execute(select(table))]
    engine.dispose()
    return found


def test_predictions_and_feedback_are_stored_and_reported(server):
    red = predict(server, RED, x=10, y=20, crop=0.5)
    green, blue = predict(server, GREEN), predict(server, BLUE)
    assert [p["predictions"][0]["label"] for p in (red, green, blue)] == ["red", "green", "blue"]

    assert send(server, red["id"], {"correct": True}) == (200, {
        "prediction_id": red["id"], "model": "rgb", "label": "red", "correct": True,
        "stored": True})
    assert send(server, green["id"], {"label": "green"})[1]["correct"] is True
    status, body = send(server, green["id"], {"label": "blue"})  # changed their mind
    assert (status, body["correct"], body["label"]) == (200, False, "blue")
    assert send(server, blue["id"], {"label": "blue", "correct": True})[0] == 200

    stored = {r["id"]: r for r in rows(server.db_url, predictions)}
    assert set(stored) == {red["id"], green["id"], blue["id"]}
    first = stored[red["id"]]
    assert first["input_sha256"] == hashlib.sha256(solid(RED)).hexdigest()
    assert (first["x"], first["y"], first["crop"]) == (10.0, 20.0, 0.5)
    assert first["labels"] == [p["label"] for p in red["predictions"]]
    assert first["scores"] == [p["score"] for p in red["predictions"]]
    assert first["total_ms"] == red["timings_ms"]["total"] or first["total_ms"] > 0
    judged = {r["prediction_id"]: (r["label"], r["correct"]) for r in
              rows(server.db_url, feedback)}
    assert judged == {red["id"]: ("red", True), green["id"]: ("blue", False),
                      blue["id"]: ("blue", True)}  # one row each: re-sending updates

    accuracy = server.client.get("/api/models/rgb/accuracy").json()
    assert accuracy["predictions"] == 3 and accuracy["with_feedback"] == 3
    assert accuracy["top1"]["hits"] == 2 and accuracy["top1"]["rate"] == pytest.approx(2 / 3,
                                                                                       abs=1e-6)
    assert accuracy["topk"]["k"] == 3 and accuracy["topk"]["hits"] == 3
    assert accuracy["confusions"] == [{"actual": "blue", "predicted": "green", "count": 1}]
    assert [r["id"] for r in accuracy["rejected"]] == [green["id"]]
    by_label = {r["label"]: r for r in accuracy["labels"]}
    assert by_label["blue"]["recall"] == 0.5 and by_label["green"]["precision"] == 0.0
    assert server.client.get("/api/models/rgb/accuracy",
                             params={"version": "nope"}).json()["predictions"] == 0
    future = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + 3600))
    assert server.client.get("/api/models/rgb/accuracy",
                             params={"since": future}).json()["with_feedback"] == 0

    latency = server.client.get("/api/models/rgb/latency").json()
    assert sum(b["count"] for b in latency["series"]) == 3
    since = datetime.fromisoformat(latency["since"])  # bounded by default: the last 24 hours
    assert abs(datetime.now(UTC) - timedelta(hours=24) - since) < timedelta(minutes=1)
    assert latency["until"] is None

    metrics = server.client.get("/metrics").text
    assert "modelhost_prediction_log_database_up 1.0" in metrics
    assert "modelhost_prediction_log_records_stored_total 7.0" in metrics  # 3 + 4 feedback


@pytest.mark.parametrize("body, status, code", [
    ({"label": "purple"}, 422, "unknown_label"),
    ({"label": "re\nd"}, 422, "invalid_parameter"),
    ({"label": "red\u202e"}, 422, "invalid_parameter"),
    ({"label": "x" * 201}, 422, "invalid_parameter"),
    ({"label": "   "}, 422, "invalid_parameter"),
    ({}, 422, "invalid_parameter"),
    ({"label": 5}, 422, "invalid_parameter"),
    ({"label": "green", "correct": True}, 422, "invalid_parameter"),
    ([], 422, "invalid_parameter"),
])
def test_bad_feedback_is_refused_with_its_code(repo_server, body, status, code):
    prediction = predict(repo_server, RED)
    got, answer = send(repo_server, prediction["id"], body)
    assert (got, answer["error"]["code"]) == (status, code)


def test_malformed_bodies_unknown_ids_and_lone_surrogates(repo_server):
    prediction = predict(repo_server, RED)
    url = f"/api/predictions/{prediction['id']}/feedback"
    headers = {"Content-Type": "application/json"}
    bad_json = repo_server.client.post(url, content=b'{"label": ', headers=headers)
    assert (bad_json.status_code, bad_json.json()["error"]["code"]) == (400, "malformed_request")
    surrogate = repo_server.client.post(url, content=b'{"label": "\\ud800"}', headers=headers)
    assert (surrogate.status_code, surrogate.json()["error"]["code"]) == (422,
                                                                         "invalid_parameter")
    unknown = send(repo_server, "0" * 32, {"correct": True})
    assert (unknown[0], unknown[1]["error"]["code"]) == (404, "not_found")
    assert repo_server.client.get("/api/models/nope/accuracy").status_code == 404


def test_new_labels_when_allowed_and_nothing_when_logging_is_off(model_repo, tmp_path):
    db = f"sqlite:///{tmp_path / 'p.db'}"
    server = serve_in_process([str(model_repo), "--db", db, "--allow-new-labels"], tmp_path)
    try:
        prediction = predict(server, RED)
        status, body = send(server, prediction["id"], {"label": "crimson"})
        assert (status, body["label"], body["correct"]) == (200, "crimson", False)
    finally:
        assert server.stop() == 0

    quiet_db = f"sqlite:///{tmp_path / 'quiet.db'}"
    server = serve_in_process([str(model_repo), "--db", quiet_db, "--no-log-predictions"], tmp_path)
    try:
        prediction = predict(server, RED)
        status, body = send(server, prediction["id"], {"correct": True})
        assert (status, body["error"]["code"]) == (404, "not_found")
    finally:
        assert server.stop() == 0
    assert not (tmp_path / "quiet.db").exists()


def test_images_are_kept_only_when_asked_and_old_rows_expire(model_repo, tmp_path):
    from modelhost.feedback.store import Store

    db = f"sqlite:///{tmp_path / 'log.db'}"
    store = Store(db)
    store.migrate()
    old = time.time() - 3 * 86400
    store.write([{"kind": "prediction", "id": "f" * 32, "time": old, "model": "rgb",
                  "version": "1", "sha256": "0" * 64, "labels": ["red"], "scores": [1.0],
                  "decode_ms": 1, "queue_ms": 0, "inference_ms": 1, "total_ms": 2,
                  "batch_size": 1}])
    store.close()
    images = tmp_path / "images"
    server = serve_in_process([str(model_repo), "--db", db, "--store-images", str(images),
                               "--retention-days", "1"], tmp_path)
    try:
        picture = solid(GREEN)
        predict(server, GREEN)
        sha = hashlib.sha256(picture).hexdigest()
        deadline = time.monotonic() + 10  # a flush saves the image, then stores the row
        while time.monotonic() < deadline and not (
                (images / sha[:2] / sha).exists() and len(rows(db, predictions)) == 1):
            time.sleep(0.1)
        assert (images / sha[:2] / sha).read_bytes() == picture
        ids = {r["id"] for r in rows(db, predictions)}
        assert "f" * 32 not in ids and len(ids) == 1  # the 3-day-old row is gone
    finally:
        assert server.stop() == 0


def test_the_api_key_name_is_logged_never_the_secret(model_repo, tmp_path):
    from modelhost.access.keys import add_key

    keys = tmp_path / "keys.txt"
    secret = add_key(keys, "mobile-app")
    db = f"sqlite:///{tmp_path / 'log.db'}"
    server = serve_in_process([str(model_repo), "--db", db, "--api-keys", str(keys)], tmp_path)
    try:
        auth = {"Authorization": f"Bearer {secret}"}
        refused = server.client.post(f"/api/predictions/{'0' * 32}/feedback",
                                     json={"correct": True})
        assert refused.status_code == 401
        answer = server.client.post("/api/models/rgb/predict", content=solid(RED),
                                    headers={"Content-Type": "image/png", **auth}).json()
        sent = server.client.post(f"/api/predictions/{answer['id']}/feedback",
                                  json={"correct": True}, headers={"X-API-Key": secret})
        assert sent.status_code == 200
    finally:
        assert server.stop() == 0
    assert [r["client"] for r in rows(db, predictions)] == ["mobile-app"]
    assert [r["client"] for r in rows(db, feedback)] == ["mobile-app"]
    assert secret not in (tmp_path / "log.db").read_bytes().decode("latin-1")


def test_bench_traffic_is_logged_but_left_out_of_the_figures(repo_server):
    """Requests marked X-Modelhost-Bench (as `modelhost bench` sends them) are stored, and
    the accuracy figures leave them out unless include_bench=true."""
    def figures(**params) -> dict:
        return repo_server.client.get("/api/models/rgb/accuracy", params=params).json()

    def stored_through_feedback_on(prediction_id: str, before_all: dict) -> None:
        """Feedback flushes the log: every prediction made before it is stored once it counts
        (the session's server also holds other files' predictions, perhaps not yet stored)."""
        assert send(repo_server, prediction_id, {"label": "red"})[0] == 200
        deadline = time.monotonic() + 10
        while figures(include_bench="true")["with_feedback"] < before_all["with_feedback"] + 1:
            assert time.monotonic() < deadline
            time.sleep(0.1)

    stored_through_feedback_on(predict(repo_server, RED)["id"], figures(include_bench="true"))
    before, before_all = figures(), figures(include_bench="true")
    marked = repo_server.client.post("/api/models/rgb/predict", content=solid(RED),
                                     headers={"Content-Type": "image/png",
                                              "X-Modelhost-Bench": "1"}).json()
    predict(repo_server, GREEN)
    stored_through_feedback_on(marked["id"], before_all)
    after, after_all = figures(), figures(include_bench="true")
    assert after["predictions"] == before["predictions"] + 1  # the unmarked one only
    assert after["with_feedback"] == before["with_feedback"]
    assert after_all["predictions"] == before_all["predictions"] + 2
    assert after_all["with_feedback"] == before_all["with_feedback"] + 1
