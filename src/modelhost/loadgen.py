"""A small closed-loop HTTP load generator for ``modelhost bench`` and ``benchmarks/run.py``.

Each of ``concurrency`` workers owns one keep-alive connection and sends the same pre-built
request back to back, so the client's own CPU cost per request stays as low as possible: on
this project's 2-core machines the client shares the CPU with the server it measures, and
every microsecond the client spends is one the server does not get.

Why a hand-written HTTP/1.1 client instead of httpx: measured on the 2-core dev machine (busy
with other work, so absolute numbers are high) against a trivial asyncio server, POSTing the
60 kB benchmark JPEG as multipart (``python benchmarks/run.py --wrk``, "load generator on its
own"), client CPU time per request and req/s reached:

    raw asyncio protocol + uvloop, c=16    37-40 µs   8,600-9,800 req/s
    raw asyncio protocol + uvloop, c=1     52-59 µs   6,600-10,900 req/s (p50 0.09 ms)
    raw asyncio streams + uvloop, c=16     ~53 µs     (first version; p50 at c=1 0.19 ms)
    httpx.AsyncClient + uvloop, c=16     1,130-1,460 µs  420-500 req/s: the client is the limit
    wrk -t1, c=16                          21-25 µs   12,700-14,400 req/s

httpx cannot even produce the 1,500 req/s the server must reach, and at that rate would take
the whole of one of the two cores from the server; the raw client takes ~6 %, within 2x of
wrk's C. httpx stays available (``client="httpx"``) as a cross-check of the raw one.

The raw client speaks just enough HTTP/1.1: one request per round trip, status line,
``Content-Length`` or chunked bodies, ``Connection: close``. Bodies are read and discarded.
"""

from __future__ import annotations

import asyncio
import math
import ssl as ssl_module
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, cast
from urllib.parse import urlsplit

ClientKind = Literal["raw", "httpx"]
ProgressCallback = Callable[[float, int], None]
"""Called about five times a second with (fraction of the run elapsed, requests measured)."""


# ----------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Target:
    """One request, sent again and again: built once so the hot loop only writes bytes."""

    url: str
    method: str = "GET"
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def is_tls(self) -> bool:
        return urlsplit(self.url).scheme == "https"

    def raw_request(self) -> bytes:
        """The complete HTTP/1.1 request (head and body) as the bytes written per request."""
        parts = urlsplit(self.url)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        default_port = 443 if parts.scheme == "https" else 80
        host = parts.netloc if parts.port not in (None, default_port) else parts.hostname
        lines = [f"{self.method} {path} HTTP/1.1", f"Host: {host}", "User-Agent: modelhost-bench"]
        lines += [f"{name}: {value}" for name, value in self.headers]
        if self.body or self.method not in ("GET", "HEAD"):
            lines.append(f"Content-Length: {len(self.body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head + self.body


def multipart_body(
    field_name: str, filename: str, data: bytes, content_type: str = "application/octet-stream"
) -> tuple[bytes, str]:
    """Encode one file as ``multipart/form-data``; returns (body, Content-Type header value)."""
    boundary = "modelhost-bench-" + uuid.uuid4().hex
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="{field_name}"; filename="{filename}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return head + data + tail, f"multipart/form-data; boundary={boundary}"


def upload_target(url: str, field_name: str, filename: str, data: bytes) -> Target:
    """A POST of one file as multipart form data, the shape of a predict request."""
    content_type = "image/jpeg" if filename.lower().endswith((".jpg", ".jpeg")) else None
    body, header = multipart_body(field_name, filename, data, content_type or "image/*")
    return Target(url=url, method="POST", body=body, headers=(("Content-Type", header),))


# ----------------------------------------------------------------------------- clients


class Connection(Protocol):
    """One keep-alive connection that can send the target's request repeatedly."""

    async def connect(self) -> None: ...

    async def send(self) -> int:
        """Send the request once and read the whole response; returns the status code."""
        ...

    async def close(self) -> None: ...


class RawConnection:
    """HTTP/1.1 over an asyncio protocol: one write of pre-built bytes, the response parsed in
    ``data_received``. Cheaper than asyncio streams (~35 vs ~55 µs client CPU per request, and
    ~60 vs ~190 µs latency at concurrency 1, measured as in the module docstring)."""

    def __init__(self, target: Target) -> None:
        self._target = target
        self._payload = target.raw_request()
        self._protocol: _ResponseProtocol | None = None

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        tls = ssl_module.create_default_context() if self._target.is_tls else None
        is_head = self._target.method == "HEAD"
        _, self._protocol = await loop.create_connection(
            lambda: _ResponseProtocol(is_head), self._target.host, self._target.port, ssl=tls
        )

    async def send(self) -> int:
        if self._protocol is None or self._protocol.closed:
            await self.connect()
        assert self._protocol is not None
        return await self._protocol.request(self._payload)

    async def close(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            protocol.close()


class _ResponseProtocol(asyncio.Protocol):
    """One TCP connection: sends a request, settles a future with the response's status."""

    def __init__(self, is_head: bool) -> None:
        self._is_head = is_head
        self._parser = _ResponseParser(is_head)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[int] | None = None
        self.closed = False

    def request(self, payload: bytes) -> asyncio.Future[int]:
        assert self._transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self._transport.write(payload)
        return self._waiter

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        try:
            status = self._parser.feed(data)
        except ValueError as e:  # not HTTP: give up on this connection
            self._settle(exception=e)
            return
        if status is not None:
            self._settle(status=status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        status = self._parser.at_eof()
        if status is not None:
            self._settle(status=status)
        else:
            self._settle(exception=exc or ConnectionResetError("server closed the connection"))

    def _settle(self, status: int = 0, exception: BaseException | None = None) -> None:
        if exception is not None or self._parser.wants_close:
            self.close()
        self._parser = _ResponseParser(self._is_head)
        waiter, self._waiter = self._waiter, None
        if waiter is None or waiter.done():
            return
        if exception is not None:
            waiter.set_exception(exception)
        else:
            waiter.set_result(status)


class _ResponseParser:
    """Incremental parser of one HTTP/1.1 response; the body is only measured, not kept."""

    def __init__(self, is_head: bool) -> None:
        self._is_head = is_head
        self._buffer = b""
        self.status = 0
        self.wants_close = False
        self._remaining = 0  # body bytes still expected in "length" mode
        self._mode = "head"  # head, length, chunked or eof

    def feed(self, data: bytes) -> int | None:
        """Take bytes; returns the status once the whole response is in."""
        if self._mode == "length":  # the common case: count body bytes, keep none
            self._remaining -= len(data)
            return self.status if self._remaining <= 0 else None
        self._buffer += data
        if self._mode == "head":
            if not self._parse_head():
                return None
            if self._mode == "length":
                data, self._buffer = self._buffer, b""
                return self.feed(data)
        if self._mode == "chunked":
            return self.status if _chunked_complete(self._buffer) else None
        return None  # eof: complete when the connection ends

    def at_eof(self) -> int | None:
        """The status if the connection's end completes the response (a read-to-close body)."""
        return self.status if self._mode == "eof" else None

    def _parse_head(self) -> bool:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        head, self._buffer = self._buffer[: end + 4], self._buffer[end + 4 :]
        self.status = int(head[9:12])
        if 100 <= self.status < 200:  # interim response (100 Continue): the real one follows
            return self._parse_head()
        lower = head.lower()
        self.wants_close = b"\r\nconnection: close" in lower or head.startswith(b"HTTP/1.0")
        length = _content_length(lower)
        if self._is_head or self.status in (204, 304):
            self._mode, self._remaining = "length", 0
        elif length is not None:
            self._mode, self._remaining = "length", length
        elif b"\r\ntransfer-encoding: chunked" in lower:
            self._mode = "chunked"
        else:
            self._mode, self.wants_close = "eof", True
        return True


def _content_length(lower_head: bytes) -> int | None:
    start = lower_head.find(b"\r\ncontent-length:")
    if start < 0:
        return None
    end = lower_head.index(b"\r\n", start + 2)
    return int(lower_head[start + 17 : end])


def _chunked_complete(buffer: bytes) -> bool:
    """Whether ``buffer`` holds a whole chunked body (walked from the start each time: the
    responses measured here are small, so the simplicity is worth the repeat)."""
    position = 0
    while True:
        line_end = buffer.find(b"\r\n", position)
        if line_end < 0:
            return False
        size = int(buffer[position:line_end].split(b";")[0], 16)
        position = line_end + 2
        if size == 0:
            return buffer.find(b"\r\n\r\n", position - 2) >= 0  # trailers end in a blank line
        position += size + 2
        if position > len(buffer):
            return False


class HttpxConnection:
    """The same request through ``httpx.AsyncClient``: slower, kept as a cross-check."""

    def __init__(self, target: Target) -> None:
        self._target = target
        self._client: Any = None

    async def connect(self) -> None:
        import httpx

        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        self._client = httpx.AsyncClient(limits=limits, timeout=None, verify=True)

    async def send(self) -> int:
        if self._client is None:
            await self.connect()
        response = await self._client.request(
            self._target.method,
            self._target.url,
            content=self._target.body or None,
            headers=dict(self._target.headers),
        )
        return response.status_code

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


def make_connection(target: Target, client: ClientKind = "raw") -> Connection:
    """One connection of the chosen client kind."""
    return HttpxConnection(target) if client == "httpx" else RawConnection(target)


# ----------------------------------------------------------------------------- statistics


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile by linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        return math.nan
    position = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    fraction = position - low
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * fraction


@dataclass
class LevelResult:
    """What one group of workers measured. Latencies in milliseconds; statuses by code.

    ``statuses`` keys are HTTP status codes as strings, or an exception's class name for a
    request that got no response (connection refused or reset, cut off at the end). ``rps``
    and the latencies count every HTTP response, errors included (as wrk does); ``requests``
    counts responses and failures.
    """

    name: str
    concurrency: int
    duration_s: float
    requests: int
    ok: int
    rps: float
    latency_ms: dict[str, float]
    statuses: dict[str, int]
    client_cpu_us_per_request: float = math.nan

    @property
    def errors(self) -> dict[str, int]:
        """Every outcome that is not a 2xx response."""
        return {key: n for key, n in self.statuses.items() if not key.startswith("2")}

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["errors"] = self.errors
        return data


@dataclass
class _Recorder:
    """Outcomes of one group, counted only for requests started inside the measuring window.

    Latencies are kept for requests that got an HTTP response (whatever its status); failures
    without one (refused, reset, cut off at the end) are only counted.
    """

    latencies: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    last_done: float = 0.0

    def add(self, outcome: str, started: float, done: float) -> None:
        if outcome[0].isdigit():
            self.latencies.append(done - started)
        self.statuses[outcome] += 1
        self.last_done = max(self.last_done, done)


def _summarise(
    name: str, concurrency: int, recorder: _Recorder, measure_from: float, stop_at: float
) -> LevelResult:
    latencies = sorted(recorder.latencies)
    elapsed = max(recorder.last_done, stop_at) - measure_from
    summary = {f"p{q}": percentile(latencies, q) * 1e3 for q in (50, 90, 99)}
    summary["mean"] = sum(latencies) / len(latencies) * 1e3 if latencies else math.nan
    summary["max"] = latencies[-1] * 1e3 if latencies else math.nan
    statuses = dict(sorted(recorder.statuses.items()))
    return LevelResult(
        name=name,
        concurrency=concurrency,
        duration_s=elapsed,
        requests=sum(statuses.values()),
        ok=sum(n for key, n in statuses.items() if key.startswith("2")),
        rps=len(latencies) / elapsed if elapsed > 0 else 0.0,
        latency_ms=summary,
        statuses=statuses,
    )


# ----------------------------------------------------------------------------- running


@dataclass(frozen=True)
class LoadSpec:
    """A group of closed-loop workers: ``interval`` > 0 paces each worker (a probe)."""

    target: Target
    concurrency: int
    name: str = "load"
    interval: float = 0.0
    client: ClientKind = "raw"


@dataclass
class _Window:
    measure_from: float
    stop_at: float


async def _worker(
    connection: Connection, spec: LoadSpec, window: _Window, recorder: _Recorder
) -> None:
    """Send back to back until the window closes; only requests started inside it count."""
    clock = time.perf_counter
    while (started := clock()) < window.stop_at:
        try:
            outcome = str(await connection.send())
        except Exception as e:  # any failure is an outcome to count, never a crash
            outcome = type(e).__name__
        done = clock()
        if started >= window.measure_from:
            recorder.add(outcome, started, done)
        if outcome[0].isalpha():
            await asyncio.sleep(0.01)  # do not spin on a refused connection
        if spec.interval > 0:
            await asyncio.sleep(max(0.0, spec.interval - (done - started)))


async def _ticker(window: _Window, recorders: list[_Recorder], on_tick: ProgressCallback) -> None:
    start = time.perf_counter()
    total = window.stop_at - start
    while (now := time.perf_counter()) < window.stop_at:
        on_tick(min(1.0, (now - start) / total), sum(len(r.latencies) for r in recorders))
        await asyncio.sleep(0.2)


async def _connect_all(connections: list[Connection]) -> None:
    """Open connections before the clock starts; a failure is left for the workers to count."""
    results = await asyncio.gather(*(c.connect() for c in connections), return_exceptions=True)
    for connection, result in zip(connections, results, strict=True):
        if isinstance(result, BaseException):
            await connection.close()


async def run_load(
    specs: Sequence[LoadSpec],
    duration: float,
    warmup: float = 0.0,
    grace: float = 30.0,
    on_tick: ProgressCallback | None = None,
) -> list[LevelResult]:
    """Run all groups at once for ``warmup`` + ``duration`` seconds; one result per group.

    Requests still in flight ``grace`` seconds after the end are cancelled and counted as
    ``TimeoutError``. There is no per-request timer: it would cost every request a timer
    handle, and a closed loop notices a stuck server anyway (its throughput drops).
    """
    groups = [[make_connection(s.target, s.client) for _ in range(s.concurrency)] for s in specs]
    await _connect_all([c for group in groups for c in group])
    start = time.perf_counter()
    window = _Window(measure_from=start + warmup, stop_at=start + warmup + duration)
    recorders = [_Recorder() for _ in specs]
    tasks = [
        asyncio.create_task(_worker(connection, spec, window, recorder))
        for spec, group, recorder in zip(specs, groups, recorders, strict=True)
        for connection in group
    ]
    ticker = asyncio.create_task(_ticker(window, recorders, on_tick)) if on_tick else None
    cpu_start = await _cpu_at(window.measure_from)
    _, pending = await asyncio.wait(tasks, timeout=warmup + duration + grace)
    cpu_used = time.process_time() - cpu_start
    _cancel_stuck(pending, tasks, specs, recorders, window)
    await asyncio.gather(*pending, return_exceptions=True)
    if ticker:
        ticker.cancel()
    await asyncio.gather(*(c.close() for group in groups for c in group), return_exceptions=True)
    results = [
        _summarise(spec.name, spec.concurrency, recorder, window.measure_from, window.stop_at)
        for spec, recorder in zip(specs, recorders, strict=True)
    ]
    total = sum(r.requests for r in results)
    for result in results:  # one process serves all groups: share its CPU time out
        result.client_cpu_us_per_request = cpu_used / total * 1e6 if total else math.nan
    return results


async def _cpu_at(moment: float) -> float:
    """The process CPU time when the measuring window opens (warm-up excluded)."""
    await asyncio.sleep(max(0.0, moment - time.perf_counter()))
    return time.process_time()


def _cancel_stuck(
    pending: set[asyncio.Task[None]],
    tasks: list[asyncio.Task[None]],
    specs: Sequence[LoadSpec],
    recorders: list[_Recorder],
    window: _Window,
) -> None:
    owners = [r for spec, r in zip(specs, recorders, strict=True) for _ in range(spec.concurrency)]
    for task, recorder in zip(tasks, owners, strict=True):
        if task in pending:
            task.cancel()
            recorder.add("TimeoutError", window.measure_from, time.perf_counter())


def run_load_sync(
    specs: Sequence[LoadSpec],
    duration: float,
    warmup: float = 0.0,
    grace: float = 30.0,
    on_tick: ProgressCallback | None = None,
) -> list[LevelResult]:
    """:func:`run_load` on a fresh event loop, uvloop's when installed (it halves client CPU)."""
    coroutine = run_load(specs, duration, warmup, grace, on_tick)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(coroutine)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
