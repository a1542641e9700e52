"""``modelhost bench``: flags -> load generator (:mod:`modelhost.loadgen`) -> table and JSON."""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from .. import loadgen
from .remote import BENCH_HEADER, ApiKey, check_reachable, key_headers

Opt = typer.Option


def bench(
    url: Annotated[str, typer.Argument(help="Server base URL, e.g. http://127.0.0.1:8000.")],
    image: Annotated[
        Path | None,
        typer.Argument(
            help="Image file to POST; without it, --path is fetched with GET.",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ] = None,
    model: Annotated[
        str | None, Opt("--model", "-m", help="Model name: POSTs to /api/models/MODEL/predict.")
    ] = None,
    concurrency: Annotated[
        str,
        Opt("--concurrency", "-c", help="Comma-separated concurrency levels, each run in turn."),
    ] = "1,16,64",
    duration: Annotated[float, Opt(help="Seconds measured per level.")] = 15.0,
    warmup: Annotated[float, Opt(help="Seconds per level before measuring.")] = 2.0,
    json_out: Annotated[Path | None, Opt("--json", help="Write the results here.")] = None,
    field: Annotated[str, Opt(help="Multipart field name of the image.")] = "image",
    path: Annotated[
        str | None, Opt(help="Request this path instead of the predict endpoint, e.g. /healthz.")
    ] = None,
    method: Annotated[str | None, Opt(help="HTTP method [POST with an image, else GET].")] = None,
    client: Annotated[
        str, Opt(help="raw (cheap, default) or httpx (a cross-check; ~30x the client CPU).")
    ] = "raw",
    api_key: ApiKey = None,
) -> None:
    """Measure throughput and latency of a running server at several concurrency levels.

    Every request carries ``X-Modelhost-Bench: 1``: the server still logs it, marked, and
    leaves it out of the accuracy and feedback figures."""
    levels = _parse_levels(concurrency)
    target = _build_target(url, image, model, field, path, method)
    target = replace(target, headers=(*target.headers, (BENCH_HEADER, "1"),
                                      *key_headers(api_key).items()))
    if client not in ("raw", "httpx"):
        raise typer.BadParameter("--client must be raw or httpx")
    check_reachable(url, api_key)
    console = Console()
    console.print(f"[bold]{target.method} {target.url}[/] ({len(target.body):,} bytes body)")
    served = _served(url, model) if model else None
    if served:
        console.print(f"{model}: {served['precision']} on "
                      f"{', '.join(w['provider'] or 'its framework' for w in served['providers'])}",
                      markup=False)
    results = [
        _run_level(target, level, duration, warmup, client, console)  # type: ignore[arg-type]
        for level in levels
    ]
    console.print(results_table(results))
    if json_out is not None:
        write_json(json_out, target, results, duration, warmup, client, served)
        console.print(f"wrote {json_out}")
    if any(r.ok == 0 for r in results):
        raise typer.Exit(1)


def _parse_levels(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        message = f"--concurrency wants numbers like 1,16,64, not {text!r}"
        raise typer.BadParameter(message) from None
    if not levels or min(levels) < 1:
        raise typer.BadParameter("--concurrency levels must be 1 or more")
    return levels


def _build_target(
    url: str,
    image: Path | None,
    model: str | None,
    field: str,
    path: str | None,
    method: str | None,
) -> loadgen.Target:
    """The one request the run repeats: an image upload to predict, or a plain request."""
    base = url.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise typer.BadParameter(f"URL must start with http:// or https://, not {url!r}")
    if path is not None:
        full = base + "/" + path.lstrip("/")
    elif model is not None:
        full = f"{base}/api/models/{model}/predict"
    else:
        raise typer.BadParameter("give --model NAME (to predict) or --path /some/path")
    if image is None:
        return loadgen.Target(url=full, method=(method or "GET").upper())
    target = loadgen.upload_target(full, field, image.name, image.read_bytes())
    if method is not None and method.upper() != "POST":
        raise typer.BadParameter("an IMAGE is sent with POST; drop it for other methods")
    return target


def _run_level(
    target: loadgen.Target,
    concurrency: int,
    duration: float,
    warmup: float,
    client: loadgen.ClientKind,
    console: Console,
) -> loadgen.LevelResult:
    columns = (
        TextColumn(f"c={concurrency:<4}"),
        BarColumn(),
        TextColumn("{task.fields[done]:>9,} requests"),
        TimeRemainingColumn(),
    )
    bar = Progress(
        *columns,
        console=console,
        transient=True,
        refresh_per_second=4,
        disable=not console.is_terminal,  # no bar, no blank lines, in logs and pipes
    )
    with bar as progress:
        task = progress.add_task("load", total=1.0, done=0)
        spec = loadgen.LoadSpec(target, concurrency, name=f"c{concurrency}", client=client)

        def tick(fraction: float, done: int) -> None:
            progress.update(task, completed=fraction, done=done)

        result = loadgen.run_load_sync([spec], duration, warmup, on_tick=tick)[0]
        p50 = result.latency_ms["p50"]
        progress.console.print(f"c={concurrency:<4} {result.rps:10,.1f} req/s  p50 {p50:.2f} ms")
    return result


def results_table(results: list[loadgen.LevelResult], title: str | None = None) -> Table:
    """One row per level; errors listed by status code or exception name."""
    table = Table(title=title)
    for name in ("concurrency", "requests", "req/s", "p50 ms", "p90 ms", "p99 ms"):
        table.add_column(name, justify="right")
    table.add_column("errors")
    for r in results:
        errors = ", ".join(f"{key}: {n:,}" for key, n in r.errors.items()) or "-"
        table.add_row(
            str(r.concurrency),
            f"{r.requests:,}",
            f"{r.rps:,.1f}",
            *(f"{r.latency_ms[p]:.2f}" for p in ("p50", "p90", "p99")),
            errors,
        )
    return table


def write_json(
    out: Path,
    target: loadgen.Target,
    results: list[loadgen.LevelResult],
    duration: float,
    warmup: float,
    client: str,
    served: dict | None = None,
) -> None:
    """The results with what is needed to compare runs: request, settings, machine, and the
    precision and execution providers the model was served with."""
    out.parent.mkdir(parents=True, exist_ok=True)
    body = {**report(target, results, duration, warmup, client), "served": served}
    out.write_text(json.dumps(body, indent=2) + "\n")


def _served(url: str, model: str) -> dict | None:
    """The model's precision and per-worker providers, as the server reports them (the
    providers are the server's choice: ``serve --providers``), or None if it does not say."""
    import httpx

    try:
        body = httpx.get(f"{url.rstrip('/')}/api/models/{model}", timeout=10).json()
    except (httpx.HTTPError, ValueError):
        return None
    if "providers" not in body:
        return None
    return {"precision": body.get("precision"), "providers": body["providers"]}


def report(
    target: loadgen.Target,
    results: list[loadgen.LevelResult],
    duration: float,
    warmup: float,
    client: str,
) -> dict[str, Any]:
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "request": {"method": target.method, "url": target.url, "body_bytes": len(target.body)},
        "duration_s": duration,
        "warmup_s": warmup,
        "client": client,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "levels": [r.to_dict() for r in results],
    }
