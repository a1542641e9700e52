"""uvicorn's Server with modelhost's shutdown: drain on the first SIGTERM/SIGINT, exit 0.

uvicorn on its own stops listening at once and re-raises the signal after shutdown (so the exit
status is the signal's). modelhost instead turns /readyz to 503 at once, answers new predictions
with 503 ``draining``, lets in-flight ones finish within the grace period, then stops the workers
and exits 0. A second signal forces the exit. A model that fails to load (without
``--keep-going``) stops the server with a non-zero status.
"""

from __future__ import annotations

import asyncio
import logging
import select

import uvicorn

from .. import logs
from ..registry import Registry
from .protocol import ConnectionGuard

log = logging.getLogger("modelhost.server")


class Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, registry: Registry, grace: float,
                 grpc=None, guard: ConnectionGuard | None = None) -> None:
        super().__init__(config)
        self._guard = guard  # the HTTP connections' limits and drain flag
        self._grpc = grpc  # a GrpcServer started and stopped with this one, or None
        self._registry = registry
        self._grace = grace
        self._draining: asyncio.Future | None = None
        self.url: str | None = None
        self._announcing: asyncio.Task | None = None

    def _log_started_message(self, listeners) -> None:
        """uvicorn's "running on" line is replaced by modelhost's, printed once ready."""

    def handle_exit(self, sig, frame) -> None:
        if self._draining is not None or not self.started:
            self.force_exit = self.should_exit  # second signal during shutdown: hurry
            self.should_exit = True
            return
        loop = asyncio.get_event_loop()
        self._draining = loop.create_future()  # marks "drain started" for a second signal
        # Nothing else here: a signal handler interrupts whatever the main thread was doing
        # (logging, say), so even the log line waits for the loop.
        loop.call_soon_threadsafe(lambda: loop.create_task(self._drain(sig)))

    async def _drain(self, sig) -> None:
        log.info("signal %s: draining (grace %.0fs)", sig, self._grace)
        if self._guard is not None:
            self._guard.draining = True  # responses now close their connections
        await self._registry.drain(self._grace)
        self.should_exit = True

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        grpc_port = await self._grpc.start() if self._grpc is not None else None
        if self.servers and self.servers[0].sockets:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            self.url = f"http://{host}:{port}"
            self._announcing = asyncio.create_task(self._announce(grpc_port))

    async def _announce(self, grpc_port: int | None) -> None:
        """Print the URL once the models have loaded (or failed with ``--keep-going``): a URL
        printed earlier would be followed by a failure, or by 503s while models load."""
        await self._registry.lifecycle.loaded.wait()
        if self._registry.lifecycle.fatal:
            return
        if grpc_port is not None:  # before the URL line, which tests wait for
            logs.announce(f"modelhost serving gRPC on port {grpc_port}")
        logs.announce(f"modelhost serving on {self.url}")

    async def shutdown(self, sockets=None) -> None:
        if self._grpc is not None:
            await self._grpc.stop(self._grace)
        if self._guard is not None:
            self._guard.draining = self._guard.closing = True
        await self._accept_waiting()
        for listener in self.servers:  # no new connections from here on
            listener.close()
        # A request a client sent on an open connection just before this point has not been
        # read yet; closing that connection now resets it (the full suite saw "connection
        # reset" and "disconnected without a response"). One short pause lets each be read
        # and answered (503 draining, then the connection closes).
        await asyncio.sleep(0.05)
        await super().shutdown(sockets)

    async def _accept_waiting(self, rounds: int = 100) -> None:
        """Let the loop accept the connections waiting in the listen backlog before the
        listener closes: closing it resets them, and their clients may have sent a request
        already. Accepted, each gets its answer (503 ``draining``) and is closed."""
        listening = [sock.fileno() for server in self.servers for sock in server.sockets]
        for _ in range(rounds):
            if not listening or not select.select(listening, [], [], 0)[0]:
                return
            await asyncio.sleep(0.001)

    async def on_tick(self, counter: int) -> bool:
        if self._registry.lifecycle.fatal:
            return True
        return await super().on_tick(counter)
