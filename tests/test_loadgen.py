"""The load generator against a real local HTTP server (Starlette under uvicorn, in a thread).

Timing is only checked for sanity: these tests share two cores with everything else.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import typer
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from typer.testing import CliRunner

from modelhost import loadgen
from modelhost.cli.bench import bench
from modelhost.loadgen import LoadSpec, Target, percentile, run_load, run_load_sync


@dataclass
class LiveServer:
    base: str
    client_ports: set[int]


def _app(client_ports: set[int]) -> Starlette:
    counter = itertools.count()

    async def ok(request: Request) -> Response:
        assert request.client is not None
        client_ports.add(request.client.port)
        return PlainTextResponse("ok")

    async def status(request: Request) -> Response:
        return PlainTextResponse("status", status_code=int(request.path_params["code"]))

    async def alternate(request: Request) -> Response:
        return PlainTextResponse("x", status_code=200 if next(counter) % 2 == 0 else 404)

    async def upload(request: Request) -> Response:
        form = await request.form()
        image = form["image"]
        assert not isinstance(image, str)
        data = await image.read()
        return JSONResponse(
            {"filename": image.filename, "size": len(data), "type": image.content_type}
        )

    async def chunked(request: Request) -> Response:
        async def parts() -> AsyncIterator[bytes]:
            for i in range(5):
                yield f"part {i};".encode() * 100

        return StreamingResponse(parts())

    async def close(request: Request) -> Response:
        return PlainTextResponse("bye", headers={"Connection": "close"})

    async def slow(request: Request) -> Response:
        await asyncio.sleep(0.05)
        return PlainTextResponse("slow")

    async def hang(request: Request) -> Response:
        await asyncio.sleep(10)
        return PlainTextResponse("late")

    return Starlette(
        routes=[
            Route("/ok", ok),
            Route("/status/{code:int}", status),
            Route("/alternate", alternate),
            Route("/upload", upload, methods=["POST"]),
            Route("/api/models/{model}/predict", upload, methods=["POST"]),
            Route("/chunked", chunked),
            Route("/close", close),
            Route("/slow", slow),
            Route("/hang", hang),
        ]
    )


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    ports: set[int] = set()
    config = uvicorn.Config(
        _app(ports), host="127.0.0.1", port=0, log_level="error", lifespan="off", ws="none"
    )
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not uv.started:
        assert time.monotonic() < deadline, "test server did not start"
        time.sleep(0.01)
    port = uv.servers[0].sockets[0].getsockname()[1]
    yield LiveServer(base=f"http://127.0.0.1:{port}", client_ports=ports)
    uv.should_exit = True
    thread.join(timeout=10)


def _one(
    target: Target,
    concurrency: int = 2,
    duration: float = 0.5,
    warmup: float = 0.0,
    grace: float = 30.0,
    client: loadgen.ClientKind = "raw",
) -> loadgen.LevelResult:
    spec = LoadSpec(target, concurrency, client=client)
    return run_load_sync([spec], duration=duration, warmup=warmup, grace=grace)[0]


def test_counts_add_up_and_connections_are_kept_alive(server: LiveServer) -> None:
    server.client_ports.clear()
    result = _one(Target(server.base + "/ok"), concurrency=3, duration=0.6)
    assert result.requests > 10
    assert result.requests == result.ok == result.statuses["200"]
    assert result.errors == {}
    assert result.rps == pytest.approx(result.requests / result.duration_s)
    assert len(server.client_ports) == 3  # one keep-alive connection per worker
    assert result.client_cpu_us_per_request > 0


def test_errors_are_counted_by_status(server: LiveServer) -> None:
    result = _one(Target(server.base + "/status/503"))
    assert result.ok == 0
    assert result.requests > 0
    assert result.errors == {"503": result.requests} == result.statuses


def test_mixed_statuses_are_split(server: LiveServer) -> None:
    result = _one(Target(server.base + "/alternate"), concurrency=1)
    assert set(result.statuses) == {"200", "404"}
    assert abs(result.statuses["200"] - result.statuses["404"]) <= 2
    assert result.errors == {"404": result.statuses["404"]}
    assert result.requests == result.statuses["200"] + result.statuses["404"]


def test_duration_and_warmup_are_respected(server: LiveServer) -> None:
    started = time.perf_counter()
    result = _one(Target(server.base + "/slow"), concurrency=2, duration=1.0, warmup=0.5)
    wall = time.perf_counter() - started
    assert 1.4 <= wall < 5.0
    assert 1.0 <= result.duration_s < 2.0
    # 2 workers for 1 s at >= 50 ms each: at most ~40 requests measured, the warm-up ones excluded
    assert 5 <= result.requests <= 42
    assert result.latency_ms["p50"] >= 50


def test_upload_body_is_valid_multipart(server: LiveServer) -> None:
    data = bytes(random.Random(1).randbytes(12_345))
    target = loadgen.upload_target(server.base + "/upload", "image", "photo.jpg", data)
    conn = loadgen.make_connection(target)

    async def once() -> int:
        try:
            return await conn.send()
        finally:
            await conn.close()

    assert asyncio.run(once()) == 200
    result = _one(target, concurrency=2, duration=0.3)
    assert result.ok == result.requests > 0
    body = _fetch_body(target)
    assert json.loads(body) == {"filename": "photo.jpg", "size": 12_345, "type": "image/jpeg"}


def _fetch_body(target: Target) -> bytes:
    """The response body for ``target``, through a plain socket (to see what the server got)."""
    with socket.create_connection((target.host, target.port)) as sock:
        sock.sendall(target.raw_request().replace(b"HTTP/1.1", b"HTTP/1.0", 1))
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).split(b"\r\n\r\n", 1)[1]


@pytest.mark.parametrize("path", ["/chunked", "/close"])
def test_chunked_and_closing_responses_are_read(server: LiveServer, path: str) -> None:
    result = _one(Target(server.base + path), concurrency=2, duration=0.4)
    assert result.requests > 5
    assert result.ok == result.requests


def test_httpx_client_agrees(server: LiveServer) -> None:
    result = _one(Target(server.base + "/status/418"), client="httpx", duration=0.3)
    assert result.requests > 0
    assert result.errors == {"418": result.requests}


def test_refused_connections_are_counted_not_raised() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = _one(Target(f"http://127.0.0.1:{port}/"), concurrency=2, duration=0.3)
    assert result.ok == 0
    assert list(result.errors) == ["ConnectionRefusedError"]
    assert result.rps == 0


def test_stuck_requests_are_cut_off_after_grace(server: LiveServer) -> None:
    started = time.perf_counter()
    result = _one(Target(server.base + "/hang"), concurrency=2, duration=0.2, grace=0.3)
    assert time.perf_counter() - started < 3
    assert result.statuses == {"TimeoutError": 2}


def test_paced_probe_runs_beside_a_load(server: LiveServer) -> None:
    load = LoadSpec(Target(server.base + "/ok"), 2, name="load")
    probe = LoadSpec(Target(server.base + "/status/200"), 1, name="probe", interval=0.1)
    ticks: list[tuple[float, int]] = []
    results = run_load_sync([load, probe], duration=1.0, on_tick=lambda f, n: ticks.append((f, n)))
    by_name = {r.name: r for r in results}
    assert 5 <= by_name["probe"].requests <= 12
    assert by_name["load"].requests > by_name["probe"].requests
    assert ticks and all(0 <= f <= 1 for f, _ in ticks)
    assert [n for _, n in ticks] == sorted(n for _, n in ticks)


def test_plain_asyncio_loop_works_too(server: LiveServer) -> None:
    spec = LoadSpec(Target(server.base + "/ok"), 2)
    result = asyncio.run(run_load([spec], duration=0.3))[0]
    assert result.ok == result.requests > 0


def test_bench_command_posts_the_image_and_writes_json(server: LiveServer, tmp_path: Path) -> None:
    image = tmp_path / "cat.jpg"
    image.write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "out.json"
    args = [server.base, str(image), "--model", "m", "-c", "1,3", "--duration", "0.3"]
    result = CliRunner().invoke(_bench_app(), [*args, "--warmup", "0", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "concurrency" in result.output
    report = json.loads(out.read_text())
    assert report["request"]["url"] == server.base + "/api/models/m/predict"
    assert [lv["concurrency"] for lv in report["levels"]] == [1, 3]
    assert all(lv["ok"] == lv["requests"] > 0 for lv in report["levels"])


def test_bench_command_gets_a_path_and_fails_without_successes(server: LiveServer) -> None:
    args = [server.base, "--path", "/status/500", "-c", "2", "--duration", "0.2", "--warmup", "0"]
    result = CliRunner().invoke(_bench_app(), args)
    assert result.exit_code == 1
    assert "500:" in result.output


@pytest.mark.parametrize(
    "args",
    [["http://127.0.0.1:1"], ["127.0.0.1:8000", "--path", "/"], ["http://h", "-c", "0,x"]],
)
def test_bench_command_rejects_bad_arguments(args: list[str]) -> None:
    result = CliRunner().invoke(_bench_app(), args)
    assert result.exit_code == 2


def _bench_app() -> typer.Typer:
    app = typer.Typer()
    app.command()(bench)
    return app


# ----------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize("q", [0, 1, 50, 90, 99, 99.9, 100])
@pytest.mark.parametrize("n", [1, 2, 7, 1000])
def test_percentile_matches_numpy(q: float, n: int) -> None:
    values = sorted(random.Random(n).expovariate(1.0) for _ in range(n))
    assert percentile(values, q) == pytest.approx(np.percentile(values, q))


def test_percentile_of_nothing_is_nan() -> None:
    assert np.isnan(percentile([], 50))


def test_summary_percentiles_from_known_latencies() -> None:
    recorder = loadgen._Recorder()
    for ms in random.Random(0).sample(range(1, 101), 100):  # 1..100 ms in any order
        recorder.add("200", 0.0, ms / 1000)
    recorder.add("503", 0.0, 0.2)
    recorder.add("ConnectionResetError", 0.0, 0.0)
    result = loadgen._summarise("x", 4, recorder, measure_from=0.0, stop_at=2.0)
    assert result.requests == 102
    assert result.ok == 100
    assert result.errors == {"503": 1, "ConnectionResetError": 1}
    assert result.rps == pytest.approx(101 / 2.0)
    expected = np.percentile([*range(1, 101), 200], [50, 90, 99])
    got = [result.latency_ms[k] for k in ("p50", "p90", "p99")]
    assert got == pytest.approx(list(expected))
    assert result.latency_ms["max"] == pytest.approx(200)
    assert result.to_dict()["errors"] == result.errors


RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n"
)


@pytest.mark.parametrize("step", [1, 3, len(RESPONSE)])
def test_parser_handles_any_split_of_a_chunked_response(step: int) -> None:
    parser = loadgen._ResponseParser(is_head=False)
    pieces = [RESPONSE[i : i + step] for i in range(0, len(RESPONSE), step)]
    results = [parser.feed(piece) for piece in pieces]
    assert results[-1] == 200
    assert all(r is None for r in results[:-1])


def test_parser_skips_interim_responses_and_sees_close() -> None:
    parser = loadgen._ResponseParser(is_head=False)
    raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 No\r\nConnection: close\r\n"
    raw += b"Content-Length: 3\r\n\r\nabc"
    assert parser.feed(raw) == 503
    assert parser.wants_close


def test_request_bytes_are_built_once_and_well_formed() -> None:
    target = loadgen.upload_target(
        "http://localhost:8123/api/models/m/predict", "image", "a.jpg", b"xyz"
    )
    raw = target.raw_request()
    head, body = raw.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /api/models/m/predict HTTP/1.1"
    assert "Host: localhost:8123" in lines
    assert f"Content-Length: {len(body)}" in lines
    assert b"xyz" in body
    assert Target("http://h/healthz?x=1").raw_request().startswith(b"GET /healthz?x=1 HTTP/1.1")
