"""Logs: no forged lines from user input, no secrets, and a failing sink never fails a request."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from ..support import free_port, solid, start_server

CLI = [sys.executable, "-m", "modelhost.cli"]


RED = solid((250, 10, 10))
FORGED = '{"level":"error","logger":"forged","msg":"forged"}'


def raw_request(url: str, head: bytes) -> bytes:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


def test_control_characters_in_user_input_cannot_forge_log_lines(rgb_repo, tmp_path):
    server = start_server([str(rgb_repo)], tmp_path, env={"MODELHOST_ACCESS_LOG": "1"})
    try:
        c = server.client
        c.post("/api/models/x%0A" + FORGED.replace('"', "%22") + "/predict", content=RED,
               headers={"Content-Type": "image/png"})
        c.get("/api/models/rgb%0D%0A%1B[31mred%07", params={"q": "\n" + FORGED})
        c.get("/api/models/rgb/predict", params={"path": "a\n" + FORGED, "url": "\r\x00"})
        c.post("/api/models/rgb/predict", files={"image": ("a\n" + FORGED, RED, "image/png")},
               data={"top_k": "1\n" + FORGED})
        # raw bytes httpx would refuse to send: control characters in the target and headers
        raw_request(server.url, b"GET /api/models/\x1b[2J\x07 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                b"Connection: close\r\n\r\n")
        raw_request(server.url, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                b"X-Request-ID: a\x1bb\r\nUser-Agent: \x1b[31m\r\n"
                                b"Connection: close\r\n\r\n")
    finally:
        assert server.stop() == 0
    lines = server.log().splitlines()
    assert len(lines) > 8
    for line in lines:
        record = json.loads(line)  # every line is one JSON object: nothing broke out
        assert record["logger"] != "forged"
        assert not any(ord(ch) < 32 for ch in line), line
    assert any("%0A" in line or "\\n" in line for line in lines)


def serve_with_stderr(args: list[str], stderr) -> tuple[subprocess.Popen, httpx.Client]:
    process = subprocess.Popen([sys.executable, "-m", "modelhost.cli", "serve", *args,
                                "--port", "0"], stdout=subprocess.PIPE, stderr=stderr, text=True,
                               env={**os.environ, "MODELHOST_ACCESS_LOG": "1"})
    line = process.stdout.readline()
    assert line.startswith("modelhost serving on "), line
    return process, httpx.Client(base_url=line.split()[-1], timeout=30)


@pytest.mark.parametrize("sink", ["disk full", "nobody reads"])
def test_a_failing_log_sink_never_fails_a_request(rgb_repo, sink):
    """/dev/full fails every write (ENOSPC); an unread pipe blocks once its 64 KiB fill up."""
    if sink == "disk full":
        stderr = open("/dev/full", "w")  # noqa: SIM115
    else:
        read_end, stderr = os.pipe()
    process, client = serve_with_stderr([str(rgb_repo), "--log-level", "debug"],
                                        stderr)
    try:
        while client.get("/readyz").status_code != 200:
            assert process.poll() is None
            time.sleep(0.1)
        statuses = [client.post("/api/models/rgb/predict", content=RED,
                                headers={"Content-Type": "image/png",
                                         "X-Request-ID": f"r{i}-" + "x" * 50}).status_code
                    for i in range(600)]
        assert statuses == [200] * 600
        assert client.get("/healthz").status_code == 200
    finally:
        client.close()
        process.send_signal(signal.SIGTERM)
        code = process.wait(60)
        if sink == "disk full":
            stderr.close()
        else:
            os.close(read_end)
            os.close(stderr)
    assert code == 0


def test_a_full_stdout_never_stops_the_server(rgb_repo):
    """``modelhost serve ... > /dev/full``: the URL line fails with ENOSPC, the server serves."""
    port = free_port()
    with open("/dev/full", "w") as full:
        process = subprocess.Popen([*CLI, "serve", str(rgb_repo), "--port", str(port)],
                                   stdout=full, stderr=full)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        deadline = time.monotonic() + 60
        while not _ready(client):
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(0.3)  # past the URL line
        response = client.post("/api/models/rgb/predict", content=RED,
                               headers={"Content-Type": "image/png"})
        assert response.json()["predictions"][0]["label"] == "red"
    finally:
        client.close()
        process.send_signal(signal.SIGTERM)
        code = process.wait(60)
    assert code == 0


def _ready(client: httpx.Client) -> bool:
    try:
        return client.get("/readyz").status_code == 200
    except httpx.TransportError:
        return False
