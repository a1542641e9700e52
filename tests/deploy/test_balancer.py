"""Three modelhost instances behind nginx (deploy/nginx/modelhost.conf), sharing one
PostgreSQL and one Redis (rate limits). A client's rate limit holds across the instances: one
budget per API key, or per client address (nginx's X-Forwarded-For, which a client cannot
forge). One instance is stopped mid-load and restarted: every prediction and feedback
answered 2xx is stored exactly once. Stopped with SIGTERM (a rolling restart) no request fails
at all; killed with -9, only a response cut off mid-body can (nothing can retry it), and a
feedback about a prediction the dead instance had not yet written to the database gets 404
until that instance is back (its journal holds the prediction)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from modelhost.access.keys import add_key
from modelhost.settings import Settings

from ..feedback.test_nothing_lost import Load, stored, wait_for_journal
from ..postgres import free_port, postgres_server
from ..redis_server import redis_server
from ..support import LiveServer, _read_url, solid, wait_until_ready
from .topology import SHIPPED, Nginx, nobody_folder, retried

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def start_instance(model_repo: Path, db_url: str, folder: Path, port: int,
                   args: list[str]) -> LiveServer:
    """``modelhost serve`` on a fixed port (nginx knows it), with its own journal and cache,
    and no per-address connection cap (nginx caps per client: every connection is nginx's)."""
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / f"server-{time.monotonic_ns()}.log"
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "modelhost.cli", "serve", str(model_repo), "--port", str(port),
             "--db", db_url, "--journal-dir", str(folder / "journal"),
             "--cache-dir", str(folder / "cache"), "--max-connections-per-client", "0", *args],
            stdout=subprocess.PIPE, stderr=log_file, text=True, env=dict(os.environ))
    server = LiveServer(_read_url(process, log_path, 120), process, log_path,
                        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60))
    wait_until_ready(server)
    return server


def start_instances(model_repo: Path, db_url: str, folder: Path, ports: list[int],
                    args: list[str]) -> list[LiveServer]:
    """One instance per port (folders i0, i1, ...); if one fails to start, the ones already
    running are stopped rather than left behind."""
    servers: list[LiveServer] = []
    try:
        for n, port in enumerate(ports):
            servers.append(start_instance(model_repo, db_url, folder / f"i{n}", port, args))
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers


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


@contextlib.contextmanager
def limited_cluster(model_repo: Path, tmp_path: Path, args: list[str]):
    """PostgreSQL, Redis, three instances sharing them with ``args``, and nginx in front;
    yields (nginx, Redis, instance ports). Every instance exits 0 afterwards."""
    with postgres_server() as pg, redis_server(tmp_path) as shared:
        db_url = pg.create_database("limited")
        ports = [free_port() for _ in range(3)]
        every = [*args, "--rate-limit-storage", shared.url]
        servers = start_instances(model_repo, db_url, tmp_path, ports, every)
        nginx = Nginx(nobody_folder("modelhost-nginx-"), ports)
        try:
            nginx.start()
            yield nginx, shared, ports
        finally:
            codes = [server.stop() for server in servers]
            nginx_code = nginx.stop() if nginx.process else 0
            shutil.rmtree(nginx.folder, ignore_errors=True)
        assert codes == [0, 0, 0] and nginx_code == 0


def burst(url: str, count: int, headers: dict, source: str = "127.0.0.1") -> list[httpx.Response]:
    """``count`` predictions at once (3 at a time) from the address ``source``."""
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(base_url=url, transport=transport, timeout=30) as client:
        def one(_n: int) -> httpx.Response:
            return client.post("/api/models/rgb/predict", content=solid((250, 10, 10)),
                               headers={"Content-Type": "image/png", **headers})

        with ThreadPoolExecutor(3) as pool:
            return list(pool.map(one, range(count)))


def check_refusals(answers: list[httpx.Response]) -> None:
    """429 `rate_limited` with a Retry-After within the window (60 s) for the rest."""
    for answer in answers:
        if answer.status_code == 429:
            assert answer.json()["error"]["code"] == "rate_limited"
            assert 1 <= int(answer.headers["retry-after"]) <= 60
            assert answer.headers["ratelimit-remaining"] == "0"


def answered_by(nginx: Nginx) -> Counter:
    """(instance port, status) of each prediction nginx passed on."""
    found = Counter()
    for line in nginx.access_log():
        hit = re.search(r'"POST /api/models/rgb/predict [^"]*" (\d+) .* '
                        r"upstream=127\.0\.0\.1:(\d+) ", line)
        if hit:
            found[int(hit[2]), int(hit[1])] += 1
    return found


def test_a_keys_limit_holds_across_instances(model_repo, tmp_path):
    """6 per minute for a key: 6 predictions answered in all, whichever instance gets them
    (with a budget per instance it would be up to 18); another key has its own 6."""
    keys = tmp_path / "keys.txt"
    alice, bob = add_key(keys, "alice"), add_key(keys, "bob")
    args = ["--api-keys", str(keys), "--rate-limit", "6/minute", "--burst", "6"]
    with limited_cluster(model_repo, tmp_path, args) as (nginx, shared, ports):
        first = burst(nginx.url, 24, {"X-API-Key": alice})
        second = burst(nginx.url, 9, {"Authorization": f"Bearer {bob}"})
        per_instance = answered_by(nginx)
        counted = {key.decode() for key in shared.client.keys("*")}
    assert Counter(a.status_code for a in first) == {200: 6, 429: 18}
    assert Counter(a.status_code for a in second) == {200: 6, 429: 3}
    check_refusals(first + second)
    assert all(a.json()["predictions"][0]["label"] == "red"
               for a in first + second if a.status_code == 200)
    # least_conn spread the burst over all three instances, and more than one answered 200
    assert {port for port, _ in per_instance} == set(ports), per_instance
    assert len({port for port, status in per_instance if status == 200}) >= 2, per_instance
    assert sum(per_instance.values()) == 33  # nothing retried: a 429 is an answer
    assert any("key:alice/" in key for key in counted) and any("key:bob/" in key
                                                               for key in counted), counted


def test_an_addresss_limit_holds_across_instances_and_cannot_be_forged(model_repo, tmp_path):
    """Without keys the limit is per client address: the one nginx saw, forwarded in
    X-Forwarded-For (uvicorn trusts it from 127.0.0.1, where nginx runs). Two clients on two
    loopback addresses get 6 each, not 6 shared (all seen as nginx) nor 6 per instance; a
    client that writes its own X-Forwarded-For is still counted by its real address."""
    args = ["--rate-limit", "6/minute", "--burst", "6"]
    with limited_cluster(model_repo, tmp_path, args) as (nginx, shared, _ports):
        first = burst(nginx.url, 12, {}, source="127.0.0.2")
        forged = burst(nginx.url, 12, {"X-Forwarded-For": "203.0.113.9"}, source="127.0.0.3")
        more_forged = burst(nginx.url, 3, {"X-Forwarded-For": "203.0.113.10"},
                            source="127.0.0.3")
        per_instance = answered_by(nginx)
        counted = {key.decode() for key in shared.client.keys("*")}
    assert Counter(a.status_code for a in first) == {200: 6, 429: 6}
    assert Counter(a.status_code for a in forged + more_forged) == {200: 6, 429: 9}
    check_refusals(first + forged + more_forged)
    assert len({port for port, status in per_instance if status == 200}) >= 2, per_instance
    addresses = {re.search(r"addr:([^/]+)/", key)[1] for key in counted if "addr:" in key}
    assert addresses == {"127.0.0.2", "127.0.0.3"}, counted


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_stop_one_of_three_behind_nginx(model_repo, tmp_path, sig):
    with postgres_server() as pg, redis_server(tmp_path) as shared:
        db_url = pg.create_database("balanced")
        ports = [free_port() for _ in range(3)]
        # A rate limit in the shared Redis that this load stays under: it is on the path
        args = ["--rate-limit", "1000/s", "--rate-limit-storage", shared.url]
        servers = start_instances(model_repo, db_url, tmp_path, ports, args)
        nginx = Nginx(nobody_folder("modelhost-nginx-"), ports)
        try:
            nginx.start()
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
                # the instances count the clients in Redis, by the address nginx forwarded
                limited = {key.decode() for key in shared.client.keys("*")}
                victim = servers[1]
                killed_at = time.monotonic()
                victim.process.send_signal(sig)
                victim.process.wait(60)
                time.sleep(2.0)
                servers[1] = start_instance(model_repo, db_url, tmp_path / "i1", ports[1], args)
                ready_at = time.monotonic()
                rotation_at = back_in_rotation(nginx, ports[1], len(nginx.access_log()))
            for server in servers:
                wait_for_journal(server)
        finally:
            codes = [server.stop() for server in servers if server.process.poll() is None]
            nginx_code = nginx.stop() if nginx.process else 0
        access = nginx.access_log()
        shutil.rmtree(nginx.folder, ignore_errors=True)
        counts, labels = stored(db_url)

    print(f"\nrequests {len(access)}, retried by nginx {retried(access)}, failed "
          f"{len(load.failures)}, kill to restarted and ready {ready_at - killed_at:.1f} s, "
          f"to serving again {rotation_at - killed_at:.1f} s")
    assert codes == [0, 0, 0] and nginx_code == 0
    assert any("addr:127.0.0.1/" in key for key in limited), limited
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
