"""Normal request latency while slow clients hold connections open (docs/security.md).

Starts ``modelhost serve`` on the tiny benchmark model, measures sequential prediction latency
with no other clients, then again while N connections trickle bytes: half send headers one byte
at a time (slowloris), half send headers and then a body one byte at a time. Each slow
connection that the server cuts off is reopened at once, so N stay open throughout.

    python benchmarks/slow_clients.py --slow 200 --seconds 40
"""

from __future__ import annotations

import argparse
import io
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import tiny_model  # noqa: E402

HEAD = b"POST /api/models/tiny/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"


class SlowClients:
    """N connections trickling one byte each per ``interval``; reopened when cut off."""

    def __init__(self, port: int, n: int, interval: float = 0.5) -> None:
        self.port, self.n, self.interval = port, n, interval
        self.cut = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _open(self, i: int) -> tuple[socket.socket, bytes]:
        sock = socket.create_connection(("127.0.0.1", self.port))
        sock.setblocking(False)
        if i % 2:  # slow body: complete headers, then a body that never finishes
            sock.send(HEAD + b"Content-Length: 1000000\r\n\r\n")
            return sock, b"\x89" * 1_000_000
        return sock, HEAD + b"X-Slow: " + b"a" * 1_000_000

    def _run(self) -> None:
        conns = [[*self._open(i), 0] for i in range(self.n)]
        while not self._stop.wait(self.interval):
            for i, conn in enumerate(conns):
                sock, data, sent = conn
                try:
                    sock.send(data[sent:sent + 1])
                    conn[2] += 1
                except OSError:
                    sock.close()
                    self.cut += 1
                    conns[i] = [*self._open(i), 0]
        for sock, _, _ in conns:
            sock.close()

    def __enter__(self) -> SlowClients:
        self._thread.start()
        time.sleep(2)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def latencies(client: httpx.Client, body: bytes, seconds: float) -> dict:
    times, errors = [], 0
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        started = time.perf_counter()
        response = client.post("/api/models/tiny/predict", content=body,
                               headers={"Content-Type": "image/png"})
        times.append((time.perf_counter() - started) * 1000)
        errors += response.status_code != 200
    times.sort()
    pick = lambda q: round(times[min(len(times) - 1, int(q * len(times)))], 2)  # noqa: E731
    return {"p50_ms": pick(0.5), "p90_ms": pick(0.9), "p99_ms": pick(0.99),
            "max_ms": round(times[-1], 2), "errors": errors, "requests": len(times)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--slow", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=40,
                        help="Per phase; longer than the header (10 s) and request (30 s) "
                             "deadlines, so that slow connections are cut and reopened.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tiny_model.build(Path(tmp) / "tiny")
        server = subprocess.Popen(
            [sys.executable, "-m", "modelhost.cli", "serve", str(Path(tmp) / "tiny"), "--port",
             "0", "--max-connections-per-client", "0", "--log-level", "warning"],
            stdout=subprocess.PIPE, text=True)
        url = server.stdout.readline().split()[-1]
        port = int(url.rsplit(":", 1)[1])
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), (200, 30, 30)).save(buffer, "PNG")
        body = buffer.getvalue()
        try:
            with httpx.Client(base_url=url, timeout=60) as client:
                while client.get("/readyz").status_code != 200:
                    time.sleep(0.2)
                latencies(client, body, 2)  # warm up
                results = {"baseline": latencies(client, body, args.seconds)}
                with SlowClients(port, args.slow) as slow:
                    results[f"with_{args.slow}_slow"] = latencies(client, body, args.seconds)
                    results[f"with_{args.slow}_slow"]["slow_connections_cut"] = slow.cut
        finally:
            server.terminate()
            server.wait(30)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
