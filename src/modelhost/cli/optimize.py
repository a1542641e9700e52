"""``modelhost optimize MODEL --int8``: flags → quantise, measure, publish or refuse → table."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ..inputs.drift import SAMPLE_SUFFIXES, sample_files, sample_inputs
from ..preprocessing import resolve
from ..runtimes.quantize import RECORD, Report, optimize_int8, sample_tensors
from ..settings import Settings
from ..supply.convert import ConversionError, prepare
from ..types import RuntimeOptions
from .local import _load, _pick, _runtime

Opt = typer.Option


def optimize(
    target: Annotated[Path, typer.Argument(help="Model file or folder (Keras, TF and torch "
                                                "models are converted to ONNX first).")],
    int8: Annotated[bool, Opt("--int8", help="Quantise to INT8 with ONNX Runtime.")] = False,
    samples: Annotated[Path | None, Opt(
        help="Folder of real input images: calibrates (static INT8) and measures. Without it: "
             "dynamic INT8, measured on the model's samples/ and generated images.",
        exists=True, file_okay=False)] = None,
    output: Annotated[Path | None, Opt("--output", "-o",
        help="Where to write the INT8 model (default: NAME.int8.onnx beside the model).")] = None,
    min_agreement: Annotated[float, Opt(min=0.0, max=2.0,
        help="Refuse below this top-1 agreement with the FP32 model.")] = 0.99,
    model: Annotated[str | None, Opt(help="Model name (in a repository).")] = None,
    cache_dir: Annotated[Path | None, Opt(help="Where converted models are kept.")] = None,
) -> None:
    """Write a faster variant of the model, measured against it; optimize.json records what
    was measured."""
    if not int8:
        raise typer.BadParameter("choose what to do: --int8 (the only optimisation so far)")
    settings = Settings(cache_dir=cache_dir) if cache_dir else Settings()
    source = _pick(_load(target), model)
    spec = _onnx(source, settings)
    prep = resolve(spec.config, _runtime(spec, False).info)
    inputs = (sample_tensors(_images(samples), prep) if samples
              else sample_inputs(source, prep))
    console = Console()
    with console.status(f"quantising {spec.name} and measuring on {len(inputs)} samples"):
        report = optimize_int8(spec, source.path.parent, inputs, calibrate=samples is not None,
                               out=output, min_agreement=min_agreement,
                               threads=spec.config.threads)
    console.print(report_table(report))
    if not report.passed:
        typer.echo(f"modelhost: refused: top-1 agreement {report.top1_agreement:.3f} is below "
                   f"--min-agreement {min_agreement:g}; nothing written", err=True)
        raise typer.Exit(1)
    console.print(f"wrote {report.int8_file} and {RECORD} in {source.path.parent}")


def _onnx(source, settings: Settings):
    """The ONNX model to quantise: the file itself, or its verified conversion."""
    try:
        return prepare(replace(source, options=RuntimeOptions("onnx")), settings.cache_dir,
                       settings.convert_timeout)
    except ConversionError as exc:
        raise typer.BadParameter(str(exc)) from None


def _images(folder: Path) -> list[Path]:
    files = sample_files(folder)
    if not files:
        raise typer.BadParameter(f"{folder}: no images ({', '.join(SAMPLE_SUFFIXES)})")
    return files


def report_table(report: Report) -> Table:
    """What was measured, FP32 beside INT8."""
    table = Table(title=f"{report.model}: INT8 — {report.method}", title_justify="left")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("samples", str(report.samples))
    table.add_row("top-1 agreement with FP32",
                  f"{report.top1_agreement:.3f} (needs ≥ {report.min_agreement:g})")
    table.add_row("max |Δp|", f"{report.max_dp:.3g}")
    for s in report.speed:
        table.add_row(f"batch {s.batch}: FP32 → INT8 ms",
                      f"{s.fp32_ms:.3g} → {s.int8_ms:.3g} ({s.speedup:.2f}×)")
    return table
