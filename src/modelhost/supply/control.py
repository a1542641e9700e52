"""Loading and unloading models on request (``serve --model-control``; the V2 protocol's
``/v2/repository/models/{name}/load`` and ``/unload``).

Only models of the served repository can be named: the name is looked up in a fresh scan of the
folder given at start-up, never taken as a path, so a client cannot make the server load a file
of its choosing. A load goes the way of ``--watch``: conversion when the format needs it, new
workers loaded and warmed beside the old ones, then one switch (``Registry.swap``), so
loading a model that is already served reloads it from its files without failing a request.
A load that fails leaves the server as it was (the old version serving, or the model not
served) and answers 500 ``model_failed`` with the reason. An unload stops the model after what
is queued for it (``Registry.remove``). Requests for an unloaded model get 404 and /readyz stops
waiting for it. Loads and unloads go through the server's one :class:`Reloader`, shared with
``--watch``, so they are serialised with file changes too.
"""

from __future__ import annotations

import logging

from ..errors import InternalError, NotFound, StartupError
from ..registry import ModelState, RegistryView, ServedModel
from ..repository import RepositoryError
from ..types import ModelSpec
from .reloader import Reloader

log = logging.getLogger("modelhost.control")


class ModelControl:
    """Load or unload the repository's models by name, through the server's one reloader."""

    def __init__(self, registry: RegistryView, reloader: Reloader) -> None:
        self._registry = registry
        self._reloader = reloader

    async def repository(self) -> dict[str, ModelSpec]:
        """The models in the repository now, by name (a scan: no runtime loads)."""
        try:
            specs = await self._reloader.scan()
        except (RepositoryError, OSError) as exc:
            raise InternalError(f"the model repository cannot be read: {exc}") from None
        return {spec.name: spec for spec in specs}

    async def load(self, name: str) -> ServedModel:
        """Serve ``name`` from its files now (a reload if it is served already)."""
        spec = (await self.repository()).get(name)
        if spec is None:
            raise NotFound(f"model '{name}' is not in the repository")
        log.info("model %s: loading version %s on request", name, spec.version)
        try:
            new = await self._reloader.load(spec, undo_failure=True)
        except StartupError as exc:  # conversion, or an INT8 file not verified for it
            raise InternalError(f"model '{name}' failed to load: {exc}", "model_failed") from None
        if new.state is not ModelState.READY:
            raise InternalError(f"model '{name}' failed to load: {new.error}", "model_failed")
        return new

    async def unload(self, name: str) -> None:
        """Stop serving ``name``; unloading a model that is not served does nothing."""
        if name not in self._registry.models and name not in await self.repository():
            raise NotFound(f"model '{name}' is not in the repository")
        log.info("model %s: unloading on request", name)
        await self._reloader.unload(name)
