"""A live model repository (``serve --watch``): notice new versions, replaced files and removed
models, and swap them in without failing a request.

The watcher only notices and describes; the server's one :class:`Reloader` (shared with V2
model control) prepares and builds the new version, and :class:`Registry` owns the models and
does the swap (load and warm the new version in new workers, switch traffic in one step, drain
and stop the old workers). A version that fails to load leaves the old one serving, reported on
/readyz and /api/models. File events come from ``watchfiles`` (inotify, debounced); each batch
of events re-reads the repository, which is cheap (no runtime loads), and compares a
fingerprint per model: its version, format, labels, configuration and the size and mtime of its
files.
"""

from __future__ import annotations

import logging
from pathlib import Path

import watchfiles

from ..errors import StartupError
from ..registry import ModelState, RegistryView
from ..repository import RepositoryError
from ..types import ModelSpec
from .reloader import Reloader

log = logging.getLogger("modelhost.watch")


def fingerprint(spec: ModelSpec) -> tuple:
    """What must change for a model to be reloaded."""
    root = spec.path if spec.path.is_dir() else None
    files = sorted(root.rglob("*")) if root else [spec.path]
    stats = tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files if f.is_file())
    return (spec.version, spec.format, spec.labels, spec.config, stats)


class RepositoryWatcher:
    """Keeps the registry's models in step with the files under ``root``."""

    def __init__(self, root: Path, registry: RegistryView, reloader: Reloader,
                 specs: list[ModelSpec]) -> None:
        self._root = root
        self._registry = registry
        self._reloader = reloader
        self._seen = {s.name: fingerprint(s) for s in specs}

    async def run(self) -> None:
        """Follow the files until cancelled (from the app's lifespan)."""
        async for _ in watchfiles.awatch(self._root, debounce=400, step=100):
            try:
                await self.sync()
            except Exception:  # a bug here must not stop the watching
                log.exception("reloading %s failed", self._root)

    async def sync(self) -> None:
        try:
            specs = await self._reloader.scan()
            current = {s.name: fingerprint(s) for s in specs}
        except (RepositoryError, OSError) as exc:  # mid-copy, or a broken modelhost.toml
            log.error("repository %s: %s; serving what was loaded", self._root, exc)
            return
        for name in self._seen.keys() - current.keys():
            log.info("model %s removed from the repository; stopping it", name)
            await self._reloader.unload(name)
        for spec in specs:
            if self._seen.get(spec.name) != current[spec.name]:
                await self._update(spec)
        self._seen = current

    async def _update(self, spec: ModelSpec) -> None:
        log.info("model %s: version %s changed on disk; loading it", spec.name, spec.version)
        try:
            new = await self._reloader.load(spec)
        except StartupError as exc:  # conversion, or an INT8 file not verified for it
            old = self._registry.models.get(spec.name)
            if old is not None:
                old.update_error = f"version {spec.version} failed to load: {exc}"
            log.error("%s", exc)
            return
        if new.state is ModelState.READY:
            log.info("model %s now serves version %s", spec.name, spec.version)
