"""``modelhost prepare``: convert models to ONNX ahead of time, into the cache ``serve`` reads.

Run it in an image build or an init container, so that a server starts in seconds instead of
converting (tens of seconds to minutes for a large Keras model) while a probe waits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import logs
from ..errors import StartupError
from ..settings import Settings, confine_frameworks
from ..types import FORMATS

Opt = typer.Option


def prepare(
    models: Annotated[Path | None, typer.Argument(
        help="Model file or repository folder. Without it, the demo models.")] = None,
    cache_dir: Annotated[Path | None, Opt(
        help="Where converted models are kept; give serve the same [~/.cache/modelhost].")
    ] = None,
    runtime: Annotated[str | None, Opt(
        help="auto (keep the native model when conversion fails) or onnx (fail) [auto].")
    ] = None,
    trust_model_code: Annotated[bool, Opt("--trust-model-code",
        help="Allow Python code in models (Keras Lambda layers).")] = False,
    format: Annotated[str | None, Opt("--format",
        help=f"Force the model format: {', '.join(FORMATS)} [detected from the file].")] = None,
) -> None:
    """Convert MODELS (or the demo models) to ONNX and verify them, as serve would."""
    flags = {k: v for k, v in locals().items() if v is not None and v is not False}
    settings = Settings(**flags)
    logs.configure(settings.log_level, settings.log_format)  # "converting …" as it starts
    confine_frameworks(settings.cache_dir)
    from ..supply.specs import model_specs  # what serve supplies, converted the same way

    try:
        specs = model_specs(settings)
    except StartupError as exc:
        typer.echo(f"modelhost: {exc}", err=True)
        raise typer.Exit(2) from None
    for spec in specs:
        typer.echo(f"{spec.name}: {spec.runtime_note or f'{spec.format}, nothing to convert'}")
