"""Three modelhost instances behind nginx (deploy/nginx/modelhost.conf), sharing one
PostgreSQL: one instance is stopped mid-load and restarted. Every prediction and feedback
answered 2xx is stored exactly once. Stopped with SIGTERM (a rolling restart) no request fails
at all; killed with -9, only a response cut off mid-body can (nothing can retry it), and a
feedback about a prediction the dead instance had not yet written to the database gets 404
until that instance is back (its journal holds the prediction)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from modelhost.settings import Settings

from ..feedback.test_nothing_lost import Load, stored, wait_for_journal
from ..postgres import free_port, postgres_server
from ..support import LiveServer, _read_url, solid, wait_until_ready
from .topology import SHIPPED, Nginx, nobody_folder, retried

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def start_instance(model_repo: Path, db_url: str, folder: Path, port: int) -> LiveServer:
    """``modelhost serve`` on a fixed port (nginx knows it), with its own journal and cache."""
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / f"server-{time.monotonic_ns()}.log"
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "modelhost.cli", "serve", str(model_repo), "--port", str(port),
             "--db", db_url, "--journal-dir", str(folder / "journal"),
             "--cache-dir", str(folder / "cache")],
            stdout=subprocess.PIPE, stderr=log_file, text=True, env=dict(os.environ))
    server = LiveServer(_read_url(process, log_path, 120), process, log_path,
                        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60))
    wait_until_ready(server)
    return server


def back_in_rotation(nginx: Nginx, port: int, seen: int, timeout: float = 30) -> float:
    """When nginx's access log first shows ``port`` answering after line ``seen``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(f"upstream=127.0.0.1:{port} ustatus=2" in line
               for line in nginx.access_log()[seen:]):
            return time.monotonic()
        time.sleep(0.1)
    raise AssertionError(f"nginx never sent requests to the restarted instance on {port}")


def test_nginx_settings_match_modelhost():
    text = SHIPPED.read_text()
    settings = Settings()
    size = re.search(r"client_max_body_size (\d+)m;", text)
    assert size and int(size[1]) * 2**20 == settings.max_body
    read = re.search(r"proxy_read_timeout (\d+)s;", text)
    assert read and settings.timeout < int(read[1]) <= settings.timeout + 10
    assert "least_conn;" in text
    assert re.search(r"proxy_next_upstream error timeout http_503 non_idempotent;", text)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_stop_one_of_three_behind_nginx(model_repo, tmp_path, sig):
    with postgres_server() as pg:
        db_url = pg.create_database("balanced")
        ports = [free_port() for _ in range(3)]
        servers = [start_instance(model_repo, db_url, tmp_path / f"i{n}", port)
                   for n, port in enumerate(ports)]
        nginx = Nginx(nobody_folder("modelhost-nginx-"), ports)
        nginx.start()
        try:
            # TLS terminates at nginx; the body limit answers 413 before modelhost sees it.
            trust = ssl.create_default_context(cafile=nginx.cert)
            with httpx.Client(base_url=nginx.tls_url, verify=trust) as tls:
                answer = tls.post("/api/models/rgb/predict", content=solid((250, 10, 10)),
                                  headers={"Content-Type": "image/png"})
                assert answer.status_code == 200 and answer.json()["predictions"][0]["label"] \
                    == "red"
                too_big = tls.post("/api/models/rgb/predict", content=b"\0" * (21 * 2**20),
                                   headers={"Content-Type": "image/png"})
                assert too_big.status_code == 413
            with Load(nginx.url, clients=4) as load:
                time.sleep(2.0)
                victim = servers[1]
                killed_at = time.monotonic()
                victim.process.send_signal(sig)
                victim.process.wait(60)
                time.sleep(2.0)
                servers[1] = start_instance(model_repo, db_url, tmp_path / "i1", ports[1])
                ready_at = time.monotonic()
                rotation_at = back_in_rotation(nginx, ports[1], len(nginx.access_log()))
            for server in servers:
                wait_for_journal(server)
        finally:
            codes = [server.stop() for server in servers if server.process.poll() is None]
            nginx_code = nginx.stop()
        access = nginx.access_log()
        shutil.rmtree(nginx.folder, ignore_errors=True)
        counts, labels = stored(db_url)

    print(f"\nrequests {len(access)}, retried by nginx {retried(access)}, failed "
          f"{len(load.failures)}, kill to restarted and ready {ready_at - killed_at:.1f} s, "
          f"to serving again {rotation_at - killed_at:.1f} s")
    assert codes == [0, 0, 0] and nginx_code == 0
    if sig == signal.SIGTERM:  # the drain: 503 `draining`, retried by nginx elsewhere
        assert load.failures == []
    else:  # requests refused or dropped before an answer began are retried; an answer cut
        # off mid-body cannot be (at most one per client: what was in flight)
        assert len(load.failures) <= 4, load.failures
        assert all("RemoteProtocolError" in failure for failure in load.failures)
    # Every answered prediction once; rows nobody was answered for can only come from
    # requests the killed instance logged before dying and nginx then retried elsewhere.
    assert load.predicted <= set(counts) and set(counts.values()) == {1}
    assert len(set(counts) - load.predicted) <= retried(access)
    for prediction_id, label in load.judged.items():
        assert labels.get(prediction_id) == label
    if sig == signal.SIGTERM:  # the drain stored everything before the instance exited
        assert set(load.statuses) <= {200, 202}, sorted(set(load.statuses))
    else:  # a prediction the killed instance answered just before dying waits in its journal
        # until it restarts, so feedback sent meanwhile to another instance is a 404
        assert set(load.statuses) <= {200, 202, 404}, sorted(set(load.statuses))
        # (those predictions are stored once it restarted: load.predicted <= counts above)
        assert load.statuses.count(404) <= 4
