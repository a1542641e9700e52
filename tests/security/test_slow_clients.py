"""Slow and greedy clients: trickled headers, idle connections, slow bodies, huge headers, and
too many connections from one address are all cut off while normal requests keep working.
Each response leaves in one write (one TCP segment), and long ones still arrive whole."""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from pathlib import Path

import httpx
import pytest

from ..support import serve_in_process, solid

RED = solid((250, 10, 10))


@pytest.fixture(scope="module")
def guarded(rgb_repo, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("slow")
    server = serve_in_process([str(rgb_repo), "--header-timeout", "2", "--body-timeout", "3",
                               "--max-connections-per-client", "8", "--timeout", "30"], tmp)
    server.port = int(server.url.rsplit(":", 1)[1])  # type: ignore[attr-defined]
    yield server
    assert server.stop() == 0


def connect(server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.settimeout(15)
    return sock


def read_all(sock: socket.socket) -> bytes:
    reply = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


def still_serving(server) -> None:
    assert server.client.get("/healthz").status_code == 200
    ok = server.client.post("/api/models/rgb/predict", content=RED,
                            headers={"Content-Type": "image/png"})
    assert ok.status_code == 200 and ok.json()["predictions"][0]["label"] == "red"


def test_trickled_headers_get_408_at_the_header_deadline(guarded):
    with connect(guarded) as sock:
        started = time.monotonic()
        head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100
        try:
            for byte in head:  # one byte every 50 ms: 5+ s to send it all
                sock.send(bytes([byte]))
                time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = read_all(sock)
        elapsed = time.monotonic() - started
    assert reply.startswith(b"HTTP/1.1 408 "), reply
    assert b'"request_timeout"' in reply and elapsed < 6
    still_serving(guarded)


def test_a_silent_connection_is_closed(guarded):
    with connect(guarded) as sock:
        reply = read_all(sock)
    assert reply.startswith(b"HTTP/1.1 408 ") and b"request_timeout" in reply
    still_serving(guarded)


def test_a_body_trickled_after_the_response_does_not_keep_the_connection(guarded):
    with connect(guarded) as sock:
        sock.sendall(b"POST /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n")
        started = time.monotonic()
        reply = b""
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while time.monotonic() - started < 12:
                sock.send(b"x")
                time.sleep(0.2)
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            reply = read_all(sock)
    assert time.monotonic() - started < 12, "the connection stayed open"
    assert reply.startswith(b"HTTP/1.1 405 "), reply[:200]  # answered, then cut off


def test_a_slow_body_is_cut_off_at_the_body_deadline(guarded):
    with connect(guarded) as sock:
        sock.sendall(b"POST /api/models/rgb/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: image/png\r\nContent-Length: 5000\r\n\r\n")
        started = time.monotonic()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while time.monotonic() - started < 12:
                sock.send(b"x")
                time.sleep(0.2)
        read_all(sock)
        assert time.monotonic() - started < 6
    still_serving(guarded)


HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"


@pytest.mark.parametrize("head", [
    b"GET /api/models/" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    HEALTHZ + b"X-Big: " + b"a" * 2_000_000 + b"\r\n\r\n",
    HEALTHZ + b"".join(b"X-%d: a\r\n" % i for i in range(5000)) + b"\r\n",
    HEALTHZ + b"X-A: " + b"a" * 17_000 + b"\r\n\r\n",  # in one packet
])
def test_oversized_request_lines_and_headers_are_400(guarded, head):
    with connect(guarded) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(head)
        reply = read_all(sock)
    assert reply.startswith(b"HTTP/1.1 400 "), reply[:200]
    assert b'"malformed_request"' in reply and b"16,384 bytes" in reply
    still_serving(guarded)


def test_connections_per_client_are_capped(guarded):
    guarded.client.close()  # its keep-alive connection would count against the cap
    guarded.client = httpx.Client(base_url=guarded.url, timeout=60)
    held = [connect(guarded) for _ in range(8)]
    try:
        for sock in held:  # make sure the server has accepted each of them
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        with connect(guarded) as extra:
            reply = read_all(extra)
        assert reply.startswith(b"HTTP/1.1 503 "), reply
        assert b'"overloaded"' in reply and b"retry-after: 1" in reply
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 5
    while True:  # the server notices the closes asynchronously
        try:
            still_serving(guarded)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_pipelined_and_keep_alive_requests_still_work(guarded):
    with connect(guarded) as sock:
        sock.sendall(HEALTHZ + b"\r\n" + HEALTHZ + b"Connection: close\r\n\r\n")
        reply = read_all(sock)
    assert reply.count(b"HTTP/1.1 200 ") == 2
    with connect(guarded) as sock:
        for _ in range(3):  # one connection, requests spaced under the header deadline
            sock.sendall(HEALTHZ + b"\r\n")
            reply = b""
            while not reply.endswith(b'{"status":"ok"}'):
                reply += sock.recv(65536)
            assert reply.startswith(b"HTTP/1.1 200 ")
            time.sleep(1)


def segments_received(sock: socket.socket) -> int:
    """``tcpi_segs_in`` of Linux's ``struct tcp_info``: TCP segments this socket received."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return struct.unpack_from("I", info, 140)[0]  # after 8 u8, 24 u32, 4 u64 and tcpi_segs_out


def test_each_response_leaves_in_one_segment(guarded):
    """uvicorn writes the head and the body apart (two segments, two client wake-ups, with
    Nagle off); modelhost joins them: one segment per response, errors included."""
    predict = (b"POST /api/models/rgb/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               b"Content-Type: image/png\r\nContent-Length: %d\r\n\r\n" % len(RED) + RED)
    missing = b"GET /api/models/nope HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with connect(guarded) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(HEALTHZ + b"\r\n")  # a new connection's first request is ACKed apart
        time.sleep(0.3)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        for request, status, tail in [(HEALTHZ + b"\r\n", b"200", b'{"status":"ok"}'),
                                      (predict, b"200", b"}"), (missing, b"404", b"}")] * 2:
            time.sleep(0.05)  # the ACK of the last response has left
            before = segments_received(sock)
            sock.sendall(request)
            time.sleep(0.3)  # every segment of the response has arrived
            reply = sock.recv(65536)
            assert reply.startswith(b"HTTP/1.1 " + status) and reply.endswith(tail), reply
            assert segments_received(sock) - before == 1, request


def test_a_long_response_arrives_whole(guarded):
    """A static file streamed in chunks: the joined writes keep every byte, in order."""
    import modelhost.http

    expected = (Path(modelhost.http.__file__).parent / "static" / "vendor"
                / "chart.umd.min.js").read_bytes()
    assert len(expected) > 150_000
    for _ in range(2):
        response = guarded.client.get("/static/vendor/chart.umd.min.js")
        assert response.status_code == 200 and response.content == expected


PREDICT_CHUNKED = (b"POST /api/models/rgb/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   b"Content-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n")


def _chunked(body: bytes, extension: bytes = b"", size: int = 64) -> bytes:
    parts = [body[i:i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x%s\r\n%s\r\n" % (len(p), extension, p) for p in parts) + b"0\r\n\r\n"


@pytest.mark.parametrize("split", [False, True])
def test_long_chunk_extensions_are_400(guarded, split):
    """100 KB of chunk extension, in the headers' packet or after them."""
    body = _chunked(RED, b";x=" + b"a" * 100_000)
    with connect(guarded) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            if split:
                sock.sendall(PREDICT_CHUNKED)
                time.sleep(0.2)
                sock.sendall(body)
            else:
                sock.sendall(PREDICT_CHUNKED + body)
        reply = read_all(sock)
    assert reply.startswith(b"HTTP/1.1 400 "), reply[:200]
    assert b'"malformed_request"' in reply and b"chunk extensions over 4,096 bytes" in reply
    still_serving(guarded)


def test_chunked_bodies_with_short_extensions_still_work(guarded):
    """Many small chunks, each with a short extension, stay within the allowance."""
    for extension in (b"", b";name=value"):
        with connect(guarded) as sock:
            sock.sendall(PREDICT_CHUNKED.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
                         + _chunked(RED, extension, size=16))
            reply = read_all(sock)
        assert reply.startswith(b"HTTP/1.1 200 "), reply[:300]
        assert b'"label":"red"' in reply
