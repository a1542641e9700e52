"""Worker crashes, hangs, deadlines and overload, on a real server with real worker processes."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from ..support import rgb_model, serve_in_process, solid, wait_until_ready

RED = (255, 0, 0)


@pytest.fixture
def server(tmp_path):
    rgb_model(tmp_path / "repo" / "rgb", size=64)
    live = serve_in_process([str(tmp_path / "repo"), "--replicas", "2", "--max-queue", "8",
                             "--timeout", "5"], tmp_path)
    yield live
    assert live.stop() == 0


def post(url: str, timeout_header: float | None = None) -> httpx.Response:
    headers = {"x-request-timeout": str(timeout_header)} if timeout_header else {}
    return httpx.post(f"{url}/api/models/rgb/predict", files={"image": ("r.png", solid(RED))},
                      headers=headers, timeout=30)


def run_load(url: str, count: int, threads: int = 8) -> list[httpx.Response]:
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda _: post(url), range(count)))


@pytest.mark.slow
def test_killed_worker_fails_only_its_requests_and_is_restarted(server):
    pids = server.worker_pids()
    assert len(pids) == 2
    with ThreadPoolExecutor(1) as background:
        load = background.submit(run_load, server.url, 300)
        time.sleep(0.3)
        os.kill(pids[0], signal.SIGKILL)
        responses = load.result()
    statuses = [r.status_code for r in responses]
    crashed = [r for r in responses if r.status_code == 503]
    assert statuses.count(200) >= 300 - 2 * 2 * 8  # at most its in-flight batches failed
    assert set(statuses) <= {200, 503}
    for response in crashed:
        assert response.json()["error"]["code"] == "worker_crashed"
        assert response.headers["retry-after"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (len(server.worker_pids()) < 2
                                           or pids[0] in server.worker_pids()):
        time.sleep(0.1)
    assert len(server.worker_pids()) == 2 and pids[0] not in server.worker_pids()
    wait_until_ready(server)
    metrics = server.client.get("/metrics").text
    assert 'modelhost_worker_restarts_total{model="rgb"} 1.0' in metrics
    assert post(server.url).status_code == 200


def test_all_workers_dead_is_503_and_readyz_tells_the_truth(server):
    for pid in server.worker_pids():
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.3)
    ready = server.client.get("/readyz")
    response = post(server.url)
    assert ready.status_code == 503 and ready.json()["models"]["rgb"]["workers_ready"] == 0
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "worker_crashed"
    wait_until_ready(server, 30)
    assert post(server.url).status_code == 200


def test_hung_worker_gives_504_then_is_killed_and_replaced(tmp_path):
    rgb_model(tmp_path / "repo" / "rgb")
    server = serve_in_process([str(tmp_path / "repo"), "--timeout", "1"], tmp_path)
    try:
        (pid,) = server.worker_pids()
        os.kill(pid, signal.SIGSTOP)  # a worker stuck in the model, as far as anyone can tell
        started = time.monotonic()
        response = post(server.url)
        assert response.status_code == 504
        assert response.json()["error"]["code"] == "deadline_exceeded"
        assert 0.9 < time.monotonic() - started < 4
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and server.worker_pids() in ([], [pid]):
            time.sleep(0.1)
        (replacement,) = server.worker_pids()
        assert replacement != pid
        wait_until_ready(server, 30)
        assert post(server.url).status_code == 200
        server.wait_for_log("hung past its deadline")
    finally:
        assert server.stop() == 0


def test_request_timeout_header_shortens_the_deadline(tmp_path):
    rgb_model(tmp_path / "repo" / "rgb")
    server = serve_in_process([str(tmp_path / "repo")], tmp_path)
    try:
        (pid,) = server.worker_pids()
        os.kill(pid, signal.SIGSTOP)
        started = time.monotonic()
        response = post(server.url, timeout_header=0.3)
        elapsed = time.monotonic() - started
        os.kill(pid, signal.SIGCONT)
        assert response.status_code == 504 and elapsed < 2
    finally:
        assert server.stop() == 0


def test_full_queue_is_503_overloaded_with_retry_after(tmp_path):
    rgb_model(tmp_path / "repo" / "rgb")
    server = serve_in_process([str(tmp_path / "repo"), "--max-queue", "2", "--timeout", "3"],
                              tmp_path)
    try:
        (pid,) = server.worker_pids()
        os.kill(pid, signal.SIGSTOP)
        responses = run_load(server.url, 16, threads=16)
        os.kill(pid, signal.SIGCONT)
        codes = [r.json()["error"]["code"] for r in responses if r.status_code != 200]
        overloaded = [r for r in responses if r.status_code == 503]
        assert overloaded and all(r.headers["retry-after"] for r in overloaded)
        assert set(codes) <= {"overloaded", "deadline_exceeded"}
        assert codes.count("overloaded") >= 16 - 2 - 2 * 2  # queue + in-flight slots
        assert server.client.get("/healthz").status_code == 200
    finally:
        assert server.stop() == 0


def test_a_corrupt_image_never_fails_the_good_ones_in_its_batch(tmp_path):
    rgb_model(tmp_path / "repo" / "rgb", size=32)
    server = serve_in_process([str(tmp_path / "repo"), "--max-batch-size", "8"], tmp_path)
    good = solid((0, 255, 0), (300, 200), fmt="PNG")
    bad = good[: len(good) // 2]  # a PNG whose header is fine and whose data ends early

    def send(index: int) -> tuple[str, httpx.Response]:
        kind = "bad" if index % 3 == 0 else "good"
        response = httpx.post(f"{server.url}/api/models/rgb/predict",
                              files={"image": ("x.png", bad if kind == "bad" else good)},
                              timeout=30)
        return kind, response

    try:
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(send, range(240)))
        for kind, response in results:
            if kind == "good":
                assert response.status_code == 200, response.text
                assert response.json()["predictions"][0]["label"] == "green"
            else:
                assert response.status_code == 422, response.text
                assert response.json()["error"]["code"] == "image_decode_failed"
        metrics = server.client.get("/metrics").text
        count = float(metrics.split('modelhost_batch_size_count{model="rgb"} ')[1].split()[0])
        total = float(metrics.split('modelhost_batch_size_sum{model="rgb"} ')[1].split()[0])
        assert total / count > 1.0  # requests really shared batches
        assert 'modelhost_worker_restarts_total{model="rgb"} 0.0' in metrics
    finally:
        assert server.stop() == 0
