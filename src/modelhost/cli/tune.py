"""``modelhost tune MODEL``: measure the worker and batching layouts now, print every one, and
cache the choice that ``serve`` then uses without measuring."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from .. import logs
from ..errors import StartupError
from ..settings import Settings, confine_frameworks
from ..tuning import SATURATION, Choice, Tuner, latency_bound

Opt = typer.Option
console = Console()


def tune(
    target: Annotated[Path, typer.Argument(help="Model file or repository folder.")],
    budget: Annotated[float, Opt(min=0.5, help="Seconds per model, worker start-ups "
                                               "included.")] = 20.0,
    model: Annotated[str | None, Opt(help="Only this model (in a repository).")] = None,
    cache_dir: Annotated[Path | None, Opt(
        help="Where converted models and tuned layouts are kept [~/.cache/modelhost].")] = None,
) -> None:
    """Measure the replicas × threads × max batch size layouts that modelhost.toml leaves open
    on this machine, print them and cache the choice (exit 1 if a model could not be
    measured)."""
    settings = Settings(models=target, tune_budget=budget)
    if cache_dir is not None:
        settings = settings.model_copy(update={"cache_dir": cache_dir})
    logs.configure("warning", "text")
    confine_frameworks(settings.cache_dir)
    from ..assembly import tuner_for  # fastapi and the runtimes load only here
    from ..supply.specs import model_specs  # what serve supplies, converted the same way

    try:
        specs = [s for s in model_specs(settings) if model is None or s.name == model]
    except StartupError as exc:
        typer.echo(f"modelhost: {exc}", err=True)
        raise typer.Exit(2) from None
    if not specs:
        typer.echo(f"modelhost: no model named {model!r} in {target}", err=True)
        raise typer.Exit(2)
    unmeasured = 0
    for spec in specs:
        tuner = tuner_for(spec, settings)
        choice = asyncio.run(tuner.choose(fresh=True))
        _print(tuner, choice)
        unmeasured += not tuner.pins.complete and "measured" not in choice.sources.values()
    raise typer.Exit(1 if unmeasured else 0)


def _print(tuner: Tuner, choice: Choice) -> None:
    name = tuner.spec.name
    if tuner.pins.complete:
        console.print(f"{name}: {choice.describe()}: set in full, nothing to measure")
        return
    bound = latency_bound(choice.measurements)
    table = Table("replicas", "threads", "max batch", "c=1 p50 ms", f"c={SATURATION} req/s", "",
                  title=f"{name} on {tuner.cores} cores (budget {tuner.budget:g} s; p50 bound "
                        + (f"{bound:.1f} ms)" if bound is not None else "n/a)"),
                  title_justify="left")
    for m in choice.measurements:
        note = m.skipped or ("chosen" if m.layout == choice.layout and
                             "measured" in choice.sources.values() else
                             "p50 > bound" if bound is not None and m.p50_ms is not None
                             and m.p50_ms > bound else "")
        table.add_row(str(m.layout.replicas), str(m.layout.threads),
                      str(m.layout.max_batch_size),
                      "" if m.p50_ms is None else f"{m.p50_ms:.1f}",
                      "" if m.per_second is None else f"{m.per_second:.1f}", note)
    console.print(table)
    console.print(f"{name}: {choice.describe()}", soft_wrap=True)
