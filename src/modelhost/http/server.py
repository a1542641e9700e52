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

import uvicorn

from ..registry import Registry

log = logging.getLogger("modelhost.server")


class Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, registry: Registry, grace: float,
                 grpc=None) -> None:
        super().__init__(config)
        self._grpc = grpc  # a GrpcServer started and stopped with this one, or None
        self._registry = registry
        self._grace = grace
        self._draining: asyncio.Future | None = None
        self.url: str | None = None

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
        await self._registry.drain(self._grace)
        self.should_exit = True

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self._grpc is not None:  # listening before the URL line, which tests wait for
            print(f"modelhost serving gRPC on port {await self._grpc.start()}", flush=True)
        if self.servers and self.servers[0].sockets:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            self.url = f"http://{host}:{port}"
            print(f"modelhost serving on {self.url}", flush=True)

    async def shutdown(self, sockets=None) -> None:
        if self._grpc is not None:
            await self._grpc.stop(self._grace)
        await super().shutdown(sockets)

    async def on_tick(self, counter: int) -> bool:
        if self._registry.lifecycle.fatal:
            return True
        return await super().on_tick(counter)
