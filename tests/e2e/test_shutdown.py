"""SIGTERM/SIGINT: readiness drops at once, in-flight requests finish, new ones get 503
draining, workers stop, exit status 0, no orphan processes."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import pytest

from ..support import pid_alive, rgb_model, solid, start_server


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_graceful_shutdown_under_load(tmp_path, sig):
    rgb_model(tmp_path / "repo" / "rgb", size=128)
    server = start_server([str(tmp_path / "repo"), "--replicas", "2", "--drain-grace", "10"],
                          tmp_path)
    workers = server.worker_pids()
    outcomes: list[tuple[str, int | str]] = []
    stop = threading.Event()

    def client_loop() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            while not stop.is_set():
                try:
                    r = client.post("/api/models/rgb/predict",
                                    files={"image": ("r.png", solid((255, 0, 0), (600, 400)))})
                    code = r.json()["error"]["code"] if r.status_code != 200 else "ok"
                    outcomes.append((code, r.status_code))
                except httpx.ConnectError:
                    outcomes.append(("refused", 0))  # listener closed after the drain
                    time.sleep(0.01)
                except httpx.TransportError as exc:  # a request sent and never answered
                    outcomes.append((f"dropped: {exc!r}", 0))

    threads = [threading.Thread(target=client_loop) for _ in range(6)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while sum(1 for kind, _ in outcomes if kind == "ok") < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    server.process.send_signal(sig)
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()
    code = server.process.wait(30)
    assert code == 0, server.log()
    kinds = {kind for kind, _ in outcomes}
    assert kinds <= {"ok", "draining", "refused"}, outcomes
    assert sum(1 for kind, _ in outcomes if kind == "ok") >= 10
    assert all(status == 503 for kind, status in outcomes if kind == "draining")
    time.sleep(0.2)
    assert not [pid for pid in workers if pid_alive(pid)]


def test_shutdown_waits_for_in_flight_requests(tmp_path):
    rgb_model(tmp_path / "repo" / "rgb")
    server = start_server([str(tmp_path / "repo"), "--drain-grace", "10"], tmp_path)
    (worker,) = server.worker_pids()
    os.kill(worker, signal.SIGSTOP)  # hold one request in flight
    result: dict = {}

    def slow_request() -> None:
        result["response"] = httpx.post(f"{server.url}/api/models/rgb/predict",
                                        files={"image": ("r.png", solid((0, 0, 255)))},
                                        timeout=30)

    thread = threading.Thread(target=slow_request)
    thread.start()
    time.sleep(0.5)
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    readyz = httpx.get(f"{server.url}/readyz", timeout=5)
    assert readyz.status_code == 503 and readyz.json()["reason"] == "draining"
    late = httpx.post(f"{server.url}/api/models/rgb/predict",
                      files={"image": ("r.png", solid((0, 0, 255)))}, timeout=10)
    assert late.status_code == 503 and late.json()["error"]["code"] == "draining"
    assert server.process.poll() is None  # still draining
    os.kill(worker, signal.SIGCONT)
    thread.join(30)
    assert result["response"].status_code == 200
    assert result["response"].json()["predictions"][0]["label"] == "blue"
    assert server.process.wait(30) == 0
