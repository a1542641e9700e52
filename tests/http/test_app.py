"""create_app's app answers its first requests with its routes already built: no request builds
route state in a server's thread, where other threads of the process (other in-process servers,
pytest itself) change the process's one list of warning filters."""

from __future__ import annotations

import contextlib
import sys
import threading
import warnings
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from modelhost.application import Core
from modelhost.assembly import build_core
from modelhost.http.app import create_app
from modelhost.settings import Settings
from modelhost.supply.specs import sources

from ..support import settings_from_args

SERVERS = 2  # several in-process servers share a test process
ROUNDS = 3  # with routes built at the first request, the first round failed in 10 runs of 10


class _Fresh:
    """The ASGI app a server passes each request to; the test puts a newly built modelhost app
    here before each round, so that every round's requests are each app's first."""

    def __init__(self) -> None:
        self.app: FastAPI | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.app is not None
        await self.app(scope, receive, send)


@contextlib.contextmanager
def _serving(target: _Fresh) -> Iterator[str]:
    """uvicorn serving ``target`` on a free 127.0.0.1 port, in a thread with its own event loop
    (as each in-process test server runs); its URL."""
    server = uvicorn.Server(uvicorn.Config(target, host="127.0.0.1", port=0, loop="asyncio",
                                           lifespan="off", log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            assert thread.is_alive(), "uvicorn did not start"
            thread.join(0.01)
        host, port = server.servers[0].sockets[0].getsockname()[:2]
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def core(model_repo) -> tuple[Core, Settings]:
    """What create_app serves, not started (the page needs no model) and without a database."""
    settings = settings_from_args([str(model_repo), "--port", "0", "--no-log-predictions"])
    return build_core(settings, sources(settings)), settings


def _first_requests(clients: list[httpx.Client]) -> list[httpx.Response]:
    """``GET /`` from one thread per client, all released at once, while this thread sets the
    suite's warning filter again and again, as pytest does at each test's start and end
    (a server's thread may still be answering a browser then); the interpreter switches
    threads every 10 µs instead of 5 ms so that all this interleaves."""
    start = threading.Barrier(len(clients))
    answers: list[httpx.Response] = []

    def ask(client: httpx.Client) -> None:
        start.wait()
        answers.append(client.get("/"))

    threads = [threading.Thread(target=ask, args=(client,)) for client in clients]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        with warnings.catch_warnings():
            for thread in threads:
                thread.start()
            while any(thread.is_alive() for thread in threads):
                warnings.simplefilter("error")
    finally:
        sys.setswitchinterval(interval)
    return answers


def test_first_requests_to_fresh_apps_succeed_while_other_threads_set_warning_filters(core):
    """Each round builds fresh apps and sends each its first request at once. Before
    create_app built the routes, FastAPI built them at the first request, in the server's
    thread, inside ``warnings.catch_warnings()``; the filters set meanwhile by another thread
    (here the test's, as pytest's between tests; in the suite also another server's first
    requests) let a warning FastAPI silences escape, and with warnings as errors the request
    failed with a 500 ``internal_error``."""
    core_, settings = core
    targets = [_Fresh() for _ in range(SERVERS)]
    with contextlib.ExitStack() as stack:
        urls = [stack.enter_context(_serving(target)) for target in targets]
        clients = [stack.enter_context(httpx.Client(base_url=url, timeout=30)) for url in urls]
        for round_ in range(ROUNDS):
            for target in targets:
                target.app = create_app(core_.registry, core_.predictor, core_.metrics,
                                        settings)
            answers = _first_requests(clients)
            assert [(a.status_code, a.headers["content-type"]) for a in answers] == \
                [(200, "text/html; charset=utf-8")] * SERVERS, (round_, [a.text for a in answers])
