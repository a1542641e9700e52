"""Loading and unloading models on request (``serve --model-control``; the V2 protocol's
``/v2/repository/models/{name}/load`` and ``/unload``).

Only models of the served repository can be named: the name is looked up in a fresh scan of the
folder given at start-up, never taken as a path, so a client cannot make the server load a file
of its choosing. A load goes the way of ``--watch``: conversion when the format needs it, new
workers loaded and warmed beside the old ones, then one switch (``Registry.swap``), so
loading a model that is already served reloads it from its files without failing a request.
A load that fails leaves the server as it was (the old version serving, or the model not
served) and answers 500 ``model_failed`` with the reason. An unload stops the model after what
is queued for it (``Registry.remove``). Requests
for an unloaded model get 404 and /readyz stops waiting for it. Calls are serialised: two loads
of one model never race (``--watch`` still acts on file changes on its own).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from .errors import InternalError, NotFound
from .registry import Registry, ServedModel
from .repository import RepositoryError
from .runtimes.convert import ConversionError
from .types import ModelSpec

log = logging.getLogger("modelhost.control")


class ModelControl:
    """Load or unload the repository's models in the registry by name."""

    def __init__(self, registry: Registry, *, scan: Callable[[], list[ModelSpec]],
                 prepare: Callable[[ModelSpec], ModelSpec],
                 build: Callable[[ModelSpec], ServedModel], grace: float) -> None:
        self._registry = registry
        self._scan = scan  # the repository's specs, not yet converted
        self._prepare = prepare  # conversion to ONNX (a subprocess; run in a thread)
        self._build = build  # a ServedModel with its own pool and batcher, not started
        self._grace = grace
        self._lock = asyncio.Lock()

    async def repository(self) -> dict[str, ModelSpec]:
        """The models in the repository now, by name (a scan: no runtime loads)."""
        try:
            specs = await asyncio.to_thread(self._scan)
        except (RepositoryError, OSError) as exc:
            raise InternalError(f"the model repository cannot be read: {exc}") from None
        return {spec.name: spec for spec in specs}

    async def load(self, name: str) -> ServedModel:
        """Serve ``name`` from its files now (a reload if it is served already)."""
        async with self._lock:
            spec = (await self.repository()).get(name)
            if spec is None:
                raise NotFound(f"model '{name}' is not in the repository")
            await self._registry.lifecycle.loaded.wait()  # not while start-up loads it
            log.info("model %s: loading version %s on request", name, spec.version)
            try:
                prepared = await asyncio.to_thread(self._prepare, spec)
            except ConversionError as exc:
                raise InternalError(f"model '{name}' failed to load: {exc}",
                                    "model_failed") from None
            new, served_before = self._build(prepared), name in self._registry.models
            if not await self._registry.swap(new, self._grace):
                if not served_before:  # as it was: not served, and /readyz not held by it
                    await self._registry.remove(name, 0)
                raise InternalError(f"model '{name}' failed to load: {new.error}", "model_failed")
            return new

    async def unload(self, name: str) -> None:
        """Stop serving ``name``; unloading a model that is not served does nothing."""
        async with self._lock:
            if name not in self._registry.models and name not in await self.repository():
                raise NotFound(f"model '{name}' is not in the repository")
            await self._registry.lifecycle.loaded.wait()
            log.info("model %s: unloading on request", name)
            await self._registry.remove(name, self._grace)
