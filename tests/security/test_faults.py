"""Faults injected through a real ONNX model (tests/security/faulty.py): NaN and infinite
outputs, an 8 GB allocation under a per-worker memory limit, a hang that gets its worker killed,
a poison input that would kill every worker it meets, and a worker killed again and again."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from ..support import serve_in_process, solid, wait_until_ready
from . import faulty

RED, GREEN = (250, 10, 10), (10, 250, 10)
LIMIT = 1536 * 2**20


@pytest.fixture
def server(tmp_path):
    faulty.build(tmp_path / "repo" / "faulty")
    live = serve_in_process([str(tmp_path / "repo"), "--replicas", "2", "--timeout", "2",
                             "--worker-memory-limit", str(LIMIT)], tmp_path)
    yield live
    assert live.stop() == 0


def predict(server, colour):
    return server.client.post("/api/models/faulty/predict", content=solid(colour),
                              headers={"Content-Type": "image/png"})


def assert_healthy(server) -> None:
    assert server.client.get("/healthz").status_code == 200
    ok = predict(server, GREEN)
    assert ok.status_code == 200 and ok.json()["predictions"][0]["label"] == "green"


def metric(server, name: str) -> float:
    text = server.client.get("/metrics").text
    match = re.search(rf'^{name}{{model="faulty"}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def test_nan_and_inf_outputs_are_a_json_error_and_counted(server):
    for colour in (faulty.NAN_COLOUR, faulty.INF_COLOUR):
        response = predict(server, colour)
        assert response.status_code == 500
        assert response.headers["content-type"] == "application/json"
        error = response.json()["error"]
        assert error["code"] == "model_failed" and "NaN or infinite" in error["message"]
    assert metric(server, "modelhost_invalid_outputs_total") == 2.0
    assert predict(server, RED).json()["predictions"][0]["label"] == "red"


def test_an_allocation_past_the_worker_memory_limit_fails_that_request_only(server):
    pids = server.worker_pids()
    limits = [Path(f"/proc/{pid}/limits").read_text() for pid in pids]
    assert all(re.search(rf"Max address space\s+{LIMIT}\s+{LIMIT}", text) for text in limits)
    response = predict(server, faulty.ALLOC_COLOUR)  # 8 GB asked for, 1.5 GB allowed
    assert response.status_code == 500 and response.json()["error"]["code"] == "model_failed"
    assert sorted(server.worker_pids()) == sorted(pids)  # nobody died, the parent neither
    assert_healthy(server)


def test_a_poison_input_is_quarantined_after_killing_two_workers(server):
    restarts = []
    for _ in range(2):
        before = server.worker_pids()
        response = predict(server, faulty.HANG_COLOUR)
        assert response.status_code == 504
        assert response.json()["error"]["code"] == "deadline_exceeded"
        deadline = time.monotonic() + 20  # the hung worker is killed 2 s after the deadline
        while set(server.worker_pids()) >= set(before) and time.monotonic() < deadline:
            time.sleep(0.1)
        restarts.append(set(before) - set(server.worker_pids()))
        wait_until_ready(server)
    assert all(len(killed) == 1 for killed in restarts)
    started = time.monotonic()
    refused = predict(server, faulty.HANG_COLOUR)
    assert time.monotonic() - started < 1.5  # refused at once, no worker touched
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "input_quarantined"
    assert metric(server, "modelhost_worker_restarts_total") == 2.0
    server.wait_for_log("quarantined")
    assert_healthy(server)


def test_a_worker_that_keeps_dying_is_restarted_with_growing_backoff(tmp_path):
    faulty.build(tmp_path / "repo" / "faulty")
    server = serve_in_process([str(tmp_path / "repo"), "--replicas", "1"], tmp_path)
    try:
        for _ in range(4):
            (pid,) = server.worker_pids()
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 60
            while server.worker_pids() in ([], [pid]) and time.monotonic() < deadline:
                time.sleep(0.05)
            wait_until_ready(server)
        delays = re.findall(r"restarting in ([\d.]+)s", server.wait_for_log("restarting in 4.0s"))
        assert delays == ["0.5", "1.0", "2.0", "4.0"]  # doubling: no restart storm
        assert metric(server, "modelhost_worker_restarts_total") == 4.0
        assert_healthy(server)
    finally:
        assert server.stop() == 0
