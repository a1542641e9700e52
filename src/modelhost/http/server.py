"""The HTTP port: uvicorn's Server, opened and closed by the application (application.py).

uvicorn on its own runs the ASGI lifespan, stops listening at once on a signal and re-raises the
signal after shutdown (so the exit status is the signal's). modelhost's :class:`Application`
owns the order instead: here a first SIGTERM/SIGINT only ends the main loop, which starts the
application's stop (drain, then this port closes), and a second one hurries it. While draining,
responses close their connections; at close, connections waiting in the listen backlog and
requests already sent on open connections are still read and answered (503 ``draining``).
"""

from __future__ import annotations

import asyncio
import logging
import select

import uvicorn

from ..registry import Registry
from .protocol import ConnectionGuard

log = logging.getLogger("modelhost.server")


class Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, registry: Registry,
                 guard: ConnectionGuard | None = None) -> None:
        super().__init__(config)
        self._guard = guard  # the HTTP connections' limits and drain flag
        self._registry = registry
        self.url: str | None = None
        self.signal: int | None = None  # the signal that started the stop, if one did

    def _log_started_message(self, listeners) -> None:
        """uvicorn's "running on" line is replaced by modelhost's, printed once ready."""

    def handle_exit(self, sig, frame) -> None:
        # Nothing else here: a signal handler interrupts whatever the main thread was doing
        # (logging, say), so even the log line waits for the loop (Application._drain).
        if self.should_exit:
            self.force_exit = True  # second signal during shutdown: hurry
        self.signal = self.signal or sig
        self.should_exit = True

    async def open(self) -> None:
        """Bind and listen (uvicorn's startup, with no ASGI lifespan: lifespan="off")."""
        if not self.config.loaded:
            self.config.load()
        self.lifespan = self.config.lifespan_class(self.config)
        await self.startup()
        if self.servers and self.servers[0].sockets:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            self.url = f"http://{host}:{port}"

    def draining(self) -> None:
        """From now on responses close their connections."""
        if self._guard is not None:
            self._guard.draining = True

    async def close(self, quiet: bool = False) -> None:
        """Stop listening and finish the open connections (uvicorn's shutdown; ``quiet``
        without its "Shutting down" line)."""
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
        uvicorn_log = logging.getLogger("uvicorn.error")
        level = uvicorn_log.level
        if quiet:
            uvicorn_log.setLevel(logging.WARNING)
        try:
            await self.shutdown()
        finally:
            uvicorn_log.setLevel(level)

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
