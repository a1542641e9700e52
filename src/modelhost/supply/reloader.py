"""Reloading models while serving: the one place that turns a repository entry into a served
model after start-up, for ``--watch`` (watch.py) and V2 model control (control.py) alike.

    scan the repository → prepare (convert when the format needs it, in a thread)
    → build a ServedModel (its own pool and batcher) → Registry.swap / Registry.remove

Loads and unloads are serialised behind one lock, whoever asks, so a file change and a V2 load
of the same model never race; none starts before start-up has loaded the models.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..registry import Progress, Registry, ServedModel, Supply
from ..types import ModelSpec


class Reloader:
    """Scan, prepare, build and swap, one at a time."""

    def __init__(self, registry: Registry, *, scan: Callable[[], list[ModelSpec]],
                 supply: Supply, grace: float) -> None:
        self._registry = registry
        self._scan = scan  # the repository's specs, not yet converted
        self._supply = supply  # prepare (a subprocess; run in a thread) and build, as at start
        self._grace = grace
        self._lock = asyncio.Lock()

    async def scan(self) -> list[ModelSpec]:
        """The repository's models now (no runtime loads); RepositoryError or OSError when it
        cannot be read."""
        return await asyncio.to_thread(self._scan)

    async def load(self, spec: ModelSpec, *, undo_failure: bool = False) -> ServedModel:
        """Serve ``spec``'s files: new workers loaded and warmed beside the old ones, then one
        switch. Returns the new model; its state says whether it serves. A failed load leaves
        the old version serving; with no old version it is shown as failed (``--watch``), or,
        with ``undo_failure``, not served at all (V2 model control: as it was). StartupError
        when preparing failed (a ConversionError, or a PrecisionError for an INT8 file that was
        not verified for these bytes)."""
        async with self._lock:
            await self._registry.lifecycle.loaded.wait()
            # the old version keeps serving (and showing ready) while this converts
            prepared = await asyncio.to_thread(self._supply.prepare, spec, _unshown)
            new, served_before = self._supply.build(prepared), spec.name in self._registry.models
            if not await self._registry.swap(new, self._grace) and undo_failure \
                    and not served_before:
                await self._registry.remove(spec.name, 0)
            return new

    async def unload(self, name: str, grace: float | None = None) -> None:
        """Stop serving ``name`` after what is queued for it."""
        async with self._lock:
            await self._registry.lifecycle.loaded.wait()
            await self._registry.remove(name, self._grace if grace is None else grace)


def _unshown(_: Progress) -> None:
    """A reload's conversion is not shown: the model's served version stays ready."""
