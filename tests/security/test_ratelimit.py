"""Rate limits: per address, per key, bursts, and one budget shared through a real Redis."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ..redis_server import redis_server
from ..support import serve_in_process
from .test_auth import cli_add_key


@pytest.fixture
def redis_url(tmp_path):
    """A throwaway redis-server on a free loopback port, nothing saved to disk."""
    with redis_server(tmp_path) as server:
        yield server.url, server.process, server.client


def statuses(server, n: int, headers=None) -> list[int]:
    return [server.client.get("/api/models", headers=headers).status_code for _ in range(n)]


def test_over_the_limit_is_429_with_retry_after_and_ratelimit_headers(rgb_repo, tmp_path):
    server = serve_in_process([str(rgb_repo), "--rate-limit", "6/minute", "--burst", "3"], tmp_path)
    try:
        remaining = []
        for _ in range(3):
            ok = server.client.get("/api/models")
            assert ok.status_code == 200
            assert ok.headers["ratelimit-limit"] == "3"
            assert ok.headers["ratelimit-policy"] == "3;w=30"
            remaining.append(ok.headers["ratelimit-remaining"])
        assert remaining == ["2", "1", "0"]
        refused = server.client.post("/api/models/rgb/predict", content=b"x",
                                     headers={"Content-Type": "image/png"})
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(refused.headers["retry-after"]) <= 30
        assert refused.headers["ratelimit-remaining"] == "0"
        assert 1 <= int(refused.headers["ratelimit-reset"]) <= 30
        assert refused.headers["x-request-id"] == refused.json()["error"]["request_id"]
        # probes and the page are never limited
        assert [server.client.get(p).status_code for p in ("/healthz", "/readyz", "/")] == [200] * 3
    finally:
        assert server.stop() == 0


def test_each_key_has_its_own_budget(rgb_repo, tmp_path):
    keys = tmp_path / "keys.txt"
    alice, bob = cli_add_key(keys, "alice"), cli_add_key(keys, "bob")
    server = serve_in_process([str(rgb_repo), "--api-keys", str(keys), "--rate-limit", "2/minute"],
                              tmp_path)
    try:
        assert statuses(server, 3, {"X-API-Key": alice}) == [200, 200, 429]
        assert statuses(server, 2, {"Authorization": f"Bearer {bob}"}) == [200, 200]
        assert statuses(server, 1, {"X-API-Key": bob}) == [429]
    finally:
        assert server.stop() == 0


def test_replicas_share_one_budget_in_redis(rgb_repo, tmp_path, redis_url):
    url, process, client = redis_url
    args = [str(rgb_repo), "--rate-limit", "4/minute", "--rate-limit-storage", url]
    first = serve_in_process(args, tmp_path)
    second = serve_in_process(args, tmp_path)
    try:
        assert statuses(first, 2) + statuses(second, 2) == [200] * 4
        assert statuses(first, 1) + statuses(second, 1) == [429, 429]
        assert any(b"addr:127.0.0.1" in k for k in client.keys("*"))
        # Redis goes away: the API keeps serving (fail open) and says so in the log.
        process.terminate()
        process.wait(10)
        assert statuses(first, 2) == [200, 200]
        first.wait_for_log("rate-limit storage failed")
    finally:
        assert first.stop() == 0
        assert second.stop() == 0


@pytest.mark.parametrize("args, message", [
    (["--rate-limit", "lots"], "expected e.g. 20/s"),
    (["--rate-limit", "20/s", "--burst", "5"], "smaller than the rate"),
    (["--rate-limit", "20/s", "--rate-limit-storage", "nosuch://x"], "rate-limit storage"),
])
def test_a_bad_rate_limit_stops_start_up_with_one_line(rgb_repo, args, message):
    done = subprocess.run([sys.executable, "-m", "modelhost.cli", "serve", str(rgb_repo), *args,
                           "--port", "0"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
