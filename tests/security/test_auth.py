"""API keys: the keys file, the `modelhost keys add` command and the server's door."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from modelhost.access.keys import KeyRing, KeysFileError, add_key
from modelhost.cli import app

from ..support import serve_in_process, solid, wait_until_ready

RED = solid((250, 10, 10))


def cli_add_key(path, name: str) -> str:
    """``modelhost keys add NAME --file PATH``, run by the real command in this process (the
    subprocess form is tested below)."""
    done = CliRunner().invoke(app, ["keys", "add", name, "--file", str(path)])
    assert done.exit_code == 0, done.output
    return done.stdout.strip()


@pytest.fixture(scope="module")
def keyed(rgb_repo, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("auth")
    keys = tmp / "keys.txt"
    secrets = {"alice": cli_add_key(keys, "alice"), "bob": cli_add_key(keys, "bob")}
    server = serve_in_process([str(rgb_repo), "--api-keys", str(keys)], tmp)
    yield server, secrets
    assert server.stop() == 0


def predict(server, headers=None):
    return server.client.post("/api/models/rgb/predict", content=RED,
                              headers={"Content-Type": "image/png", **(headers or {})})


def test_the_keys_file_stores_only_hashes(tmp_path):
    path = tmp_path / "keys.txt"
    secret = cli_add_key(path, "alice")
    text = path.read_text()
    assert secret.startswith("mh_") and len(secret) > 40
    assert secret not in text and text.startswith("alice sha256:")
    assert path.stat().st_mode & 0o777 == 0o600
    ring = KeyRing.load(path)
    assert ring.verify(secret) == "alice"
    assert ring.verify(secret[:-1]) is None and ring.verify("") is None
    assert ring.verify("x" * 10_000) is None


def test_a_duplicate_or_bad_name_is_refused(tmp_path):
    path = tmp_path / "keys.txt"
    add_key(path, "ci")
    with pytest.raises(KeysFileError, match="already exists"):
        add_key(path, "ci")
    with pytest.raises(KeysFileError, match="key name"):
        add_key(path, "bad name\n")
    done = subprocess.run([sys.executable, "-m", "modelhost.cli", "keys", "add", "ci",
                           "--file", str(path)], capture_output=True, text=True)
    assert done.returncode == 2 and "already exists" in done.stderr and done.stdout == ""


@pytest.mark.parametrize("content, message", [
    ("", "holds no keys"),
    ("alice sha256:1234\n", "expected"),
    ("alice plain-secret\n", "expected"),
    ("a sha256:" + "0" * 64 + "\na sha256:" + "1" * 64 + "\n", "repeated"),
])
def test_a_malformed_keys_file_stops_start_up_with_one_line(tmp_path, rgb_repo, content, message):
    path = tmp_path / "keys.txt"
    path.write_text(content)
    with pytest.raises(KeysFileError, match=message):
        KeyRing.load(path)
    done = subprocess.run([sys.executable, "-m", "modelhost.cli", "serve", str(rgb_repo),
                           "--api-keys", str(path), "--port", "0"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and message in done.stderr
    assert "Traceback" not in done.stderr


def test_no_key_or_a_wrong_key_is_401(keyed):
    server, secrets = keyed
    for headers in ({}, {"Authorization": "Bearer mh_wrong"}, {"X-API-Key": "mh_wrong"},
                    {"Authorization": f"Basic {secrets['alice']}"},
                    {"Authorization": "Bearer " + secrets["alice"] + "x"}):
        response = predict(server, headers)
        assert response.status_code == 401, headers
        assert response.json()["error"]["code"] == "unauthorized"
        assert response.headers["www-authenticate"] == 'Bearer realm="modelhost"'
        assert response.headers["x-content-type-options"] == "nosniff"


def test_a_valid_key_by_either_header_predicts(keyed):
    server, secrets = keyed
    for headers in ({"Authorization": f"Bearer {secrets['alice']}"},
                    {"authorization": f"bearer {secrets['bob']}"},
                    {"X-API-Key": secrets["bob"]}):
        response = predict(server, headers)
        assert response.status_code == 200, response.text
        assert response.json()["predictions"][0]["label"] == "red"


def test_unknown_paths_do_not_reveal_themselves_without_a_key(keyed):
    server, secrets = keyed
    assert server.client.get("/api/models/nope").status_code == 401
    assert server.client.get("/api/models").status_code == 401
    found = server.client.get("/api/models/nope", headers={"X-API-Key": secrets["alice"]})
    assert found.status_code == 404 and found.json()["error"]["code"] == "not_found"


def test_page_and_ops_endpoints_stay_open(keyed):
    server, _ = keyed
    for path in ("/", "/healthz", "/readyz", "/metrics", "/favicon.ico"):
        assert server.client.get(path).status_code == 200, path


def test_secrets_never_reach_the_log(keyed):
    server, secrets = keyed
    predict(server, {"X-API-Key": secrets["alice"]})
    predict(server, {"Authorization": "Bearer mh_guessed_secret"})
    log = server.wait_for_log("unauthorized request")
    assert secrets["alice"] not in log and secrets["bob"] not in log
    assert "mh_guessed_secret" not in log


def test_protect_ops_closes_health_and_metrics(rgb_repo, tmp_path):
    keys = tmp_path / "keys.txt"
    secret = cli_add_key(keys, "probe")
    server = serve_in_process([str(rgb_repo), "--protect-ops"], tmp_path, wait_ready=False,
                              env={"MODELHOST_API_KEYS": str(keys)})
    try:
        for path in ("/healthz", "/readyz", "/metrics"):
            response = server.client.get(path)
            assert response.status_code == 401, path
        server.client.headers["X-API-Key"] = secret
        wait_until_ready(server)
        assert server.client.get("/healthz").status_code == 200
        assert server.client.get("/metrics").status_code == 200
        assert server.client.get("/").status_code == 200
    finally:
        assert server.stop() == 0


@pytest.mark.slow
def test_predict_and_bench_send_the_api_key(keyed, tmp_path):
    """--api-key, or MODELHOST_API_KEY; without one, one line and exit 2 before any run."""
    import json
    import os

    server, secrets = keyed
    image = tmp_path / "red.png"
    image.write_bytes(RED)
    cli = [sys.executable, "-m", "modelhost.cli"]
    predict_cmd = [*cli, "predict", server.url, str(image), "--json"]
    by_flag = subprocess.run([*predict_cmd, "--api-key", secrets["alice"]], capture_output=True,
                             text=True, timeout=60)
    assert json.loads(by_flag.stdout)["predictions"][0]["label"] == "red", by_flag.stderr
    by_env = subprocess.run(predict_cmd, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "MODELHOST_API_KEY": secrets["bob"]})
    assert json.loads(by_env.stdout)["predictions"][0]["label"] == "red", by_env.stderr
    without = subprocess.run(predict_cmd, capture_output=True, text=True, timeout=60)
    assert without.returncode == 2 and without.stderr.startswith("modelhost: unauthorized: ")
    bench_cmd = [*cli, "bench", server.url, str(image), "-m", "rgb", "-c", "1", "--duration",
                 "0.5", "--warmup", "0"]
    bench = subprocess.run([*bench_cmd, "--api-key", secrets["alice"]], capture_output=True,
                           text=True, timeout=60)
    assert bench.returncode == 0, bench.stdout + bench.stderr
    assert "401" not in bench.stdout
    refused = subprocess.run(bench_cmd, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert refused.stderr == f"modelhost: {server.url} wants an API key: --api-key or " \
                             "MODELHOST_API_KEY\n"
