"""Nothing answered is lost: PostgreSQL stopped mid-load and restarted, the server killed
with -9 mid-load and restarted, the database missing at start-up. Afterwards every prediction
answered 200 and every feedback answered 200/202 is stored exactly once."""

from __future__ import annotations

import contextlib
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, func, select

from modelhost.feedback.schema import feedback, predictions

from ..postgres import Postgres, free_port
from ..support import COLOURS, pid_alive, serve_in_process, solid, start_server

PICTURES = {"red": (250, 10, 10), "green": (10, 250, 10), "blue": (10, 10, 250)}


class Load:
    """Clients that predict and send feedback (a wrong label every third time) until stopped,
    remembering what the server answered."""

    def __init__(self, url: str, clients: int = 3) -> None:
        self.url = url
        self.predicted: set[str] = set()
        self.judged: dict[str, str] = {}  # prediction id → label, for 200/202 answers
        self.statuses: list[int] = []
        self.failures: list[str] = []
        self.cut_off = 0  # predictions sent whose answer never came (the server died)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,)) for n in range(clients)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def _run(self, n: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            i = n
            while not self._stop.is_set():
                colour = COLOURS[i % 3]
                try:
                    self._one(client, colour, COLOURS[(i + 1) % 3] if i % 3 == 0 else colour)
                except httpx.TransportError as exc:  # the server was killed
                    self.failures.append(repr(exc))
                    time.sleep(0.05)
                i += 1

    def _one(self, client: httpx.Client, colour: str, label: str) -> None:
        try:
            answer = client.post("/api/models/rgb/predict", content=solid(PICTURES[colour]),
                                 headers={"Content-Type": "image/png"})
        except httpx.TransportError:
            self.cut_off += 1
            raise
        if answer.status_code != 200:
            self.failures.append(answer.text)
            return
        prediction_id = answer.json()["id"]
        self.predicted.add(prediction_id)
        sent = client.post(f"/api/predictions/{prediction_id}/feedback", json={"label": label})
        self.statuses.append(sent.status_code)
        if sent.status_code in (200, 202):
            self.judged[prediction_id] = label


def stored(db_url: str) -> tuple[dict[str, int], dict[str, str]]:
    engine = create_engine(db_url)
    with engine.connect() as conn:
        counts = dict(conn.execute(select(predictions.c.id, func.count())
                                   .group_by(predictions.c.id)).all())
        labels = dict(conn.execute(select(feedback.c.prediction_id, feedback.c.label)).all())
    engine.dispose()
    return counts, labels


def wait_for_journal(server, timeout: float = 60) -> dict:
    """Until the server says its database is reachable and the journal is empty."""
    deadline = time.monotonic() + timeout
    state: dict = {}
    while time.monotonic() < deadline:
        state = server.client.get("/readyz").json().get("prediction_log", {})
        if state.get("database") == "ok" and state.get("waiting_segments") == 0:
            return state
        time.sleep(0.2)
    raise AssertionError(f"journal not stored: {state}")


def assert_exactly_once(load: Load, db_url: str) -> None:
    """Every answered prediction is stored once, with its feedback. A prediction is recorded
    before its answer is written, so a server killed in between leaves a stored prediction
    whose answer never arrived: at most one per request the kill cut off, and no others."""
    counts, labels = stored(db_url)
    assert load.predicted and load.judged
    assert load.predicted <= set(counts)  # every answered prediction
    assert len(set(counts) - load.predicted) <= load.cut_off  # and only those cut off
    assert set(counts.values()) == {1}
    for prediction_id, label in load.judged.items():
        assert labels.get(prediction_id) == label


@pytest.mark.slow
def test_postgres_stopped_mid_load_loses_nothing(model_repo, postgres, tmp_path):
    db_url = postgres.create_database("outage")
    server = serve_in_process([str(model_repo), "--db", db_url], tmp_path)
    try:
        with Load(server.url) as load:
            time.sleep(1.5)
            postgres.stop(immediate=True)
            time.sleep(2.5)
            during = server.client.get("/readyz").json()["prediction_log"]
            postgres.start()
            time.sleep(1.5)
        assert during["database"] == "unavailable"
        assert load.failures == []  # predictions never waited for the database
        assert 202 in load.statuses and 200 in load.statuses  # spooled, then stored again
        assert set(load.statuses) <= {200, 202}
        wait_for_journal(server)
        assert_exactly_once(load, db_url)
    finally:
        assert server.stop() == 0


@pytest.mark.slow
def test_kill_9_mid_load_loses_nothing_answered(model_repo, tmp_path):
    db_url = f"sqlite:///{tmp_path / 'log.db'}"
    args = [str(model_repo), "--db", db_url, "--journal-dir", str(tmp_path / "journal")]
    server = start_server(args, tmp_path)
    workers = server.worker_pids()
    with Load(server.url) as load:
        time.sleep(2.0)
        server.process.kill()
        server.process.wait(10)
        time.sleep(0.3)
    assert load.judged  # feedback was in flight when the server died
    _wait_gone(workers)  # its workers noticed and exited: nothing leaks

    again = start_server(args, tmp_path)
    try:
        wait_for_journal(again)
        assert_exactly_once(load, db_url)
        late = again.client.post("/api/models/rgb/predict", content=solid(PICTURES["red"]),
                                 headers={"Content-Type": "image/png"}).json()["id"]
    finally:
        assert again.stop() == 0
    counts, _ = stored(db_url)
    assert counts.get(late) == 1  # SIGTERM flushes what was buffered before exiting


@pytest.mark.slow
def test_a_database_that_comes_later_gets_everything(model_repo, tmp_path):
    folder = Path(tempfile.mkdtemp(prefix="modelhost-pg-"))
    late = Postgres(folder, free_port())
    db_url = late.url()
    server = serve_in_process([str(model_repo), "--db", db_url], tmp_path)
    try:
        assert server.client.get("/readyz").status_code == 200  # predictions don't need it
        with Load(server.url, clients=1) as load:
            time.sleep(1.0)
        assert server.client.get("/readyz").json()["prediction_log"]["database"] == \
            "unavailable"
        assert load.failures == [] and set(load.statuses) == {202}
        assert "modelhost_prediction_log_database_up 0.0" in server.client.get("/metrics").text
        unknown = server.client.post(f"/api/predictions/{'0' * 32}/feedback",
                                     json={"label": "red"})
        assert unknown.status_code == 503  # only the database could say whether it exists
        assert unknown.json()["error"]["code"] == "db_unavailable"
        assert int(unknown.headers["Retry-After"]) >= 1
        late.init()
        late.start()
        wait_for_journal(server)
        assert_exactly_once(load, db_url)
    finally:
        assert server.stop() == 0
        with contextlib.suppress(Exception):
            late.stop()
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


def _wait_gone(pids: list[int], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if pid_alive(p)]
        if not alive:
            return
        time.sleep(0.1)
    raise AssertionError(f"workers {alive} outlived their server")
