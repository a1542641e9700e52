"""``modelhost report``: the accuracy the server's API reports, read straight from the
database, as tables (and CSV) for people who own the model."""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.console import Console
from rich.table import Table

from ..feedback import compare as comparison
from ..feedback import report as figures
from ..feedback.store import BadDatabaseUrl, Store, StoreUnavailable
from ..settings import Settings

console = Console()
Opt = typer.Option


def report(
    model: Annotated[str, typer.Argument(help="The model's name.")],
    db: Annotated[str | None, Opt(help="Database URL [the server's default].")] = None,
    since: Annotated[datetime | None, Opt(help="From this time (ISO, UTC if no zone).")] = None,
    until: Annotated[datetime | None, Opt(help="Before this time.")] = None,
    version: Annotated[str | None, Opt(help="Only this model version.")] = None,
    csv_file: Annotated[Path | None, Opt("--csv", help="Also write per-label rows here.")] = None,
    as_json: Annotated[bool, Opt("--json", help="Print the API's JSON instead.")] = False,
    include_bench: Annotated[bool, Opt("--include-bench",
        help="Also count load-test traffic (modelhost bench's requests).")] = False,
    compare: Annotated[tuple[str, str] | None, Opt(
        help="Two versions side by side (A B): rates, a two-proportion test, a verdict.")] = None,
) -> None:
    """Accuracy of MODEL from users' feedback: top-1/top-k with 95 % intervals, per label."""
    try:
        store = Store(db or Settings().db)
    except BadDatabaseUrl as exc:
        raise typer.BadParameter(str(exc)) from None
    window = (_utc(since), _utc(until), version)
    try:
        store.migrate()
        if not store.count_predictions(model, None, None, None, include_bench=True):
            _not_found(model, as_json)
        if compare is not None:
            _compare(store, model, compare, window[0], window[1], as_json)
            return
        judged = store.judged(model, *window, include_bench)
        count = store.count_predictions(model, *window, include_bench)
        out = figures.accuracy(judged, count)
    except StoreUnavailable as exc:
        console.print(f"[red]the database is unavailable:[/red] {exc}")
        raise typer.Exit(1) from None
    finally:
        store.close()
    if csv_file is not None:
        _write_csv(csv_file, out["labels"])
    if as_json:
        typer.echo(orjson.dumps({"model": model, "version": version, **out}).decode())
        return
    _print(model, out)


def _compare(store: Store, model: str, versions: tuple[str, str], since: datetime | None,
             until: datetime | None, as_json: bool) -> None:
    """``--compare A B``: what ``/api/models/{m}/versions/compare`` answers, as a table."""
    a, b = versions
    if a == b:
        raise typer.BadParameter("--compare takes two different versions")
    out = comparison.from_store(store, model, a, b, since, until)
    if as_json:
        typer.echo(orjson.dumps({"model": model, **out}).decode())
        return
    table = Table(title=f"{model}: version {a} against version {b}")
    for column in ("", f"version {a}", f"version {b}"):
        table.add_column(column, justify="left" if not column else "right")
    one, two = out["versions"][a], out["versions"][b]
    table.add_row("predictions", str(one["predictions"]), str(two["predictions"]))
    table.add_row("with feedback", *(f"{v['with_feedback']} ({_pct(v['feedback_share'])})"
                                     for v in (one, two)))
    for name, key in (("top-1", "top1"), (f"top-{one['topk']['k'] or 'k'}", "topk")):
        table.add_row(name, *(_rate(v[key]) for v in (one, two)))
    console.print(table)
    test, agreement = out["top1_test"], out["shadow_agreement"]
    if test is not None:
        console.print(f"top-1 difference ({b} − {a}): {test['difference'] * 100:+.1f} points, "
                      f"95 % CI {test['ci95'][0] * 100:+.1f} to {test['ci95'][1] * 100:+.1f}, "
                      f"p = {test['p_value']:.2g}")
    if agreement["total"]:
        console.print(f"shadow agreement: {_rate(agreement)}")
    console.print(f"verdict: {out['verdict']}")


def _rate(part: dict) -> str:
    interval = (f"  95 % CI {_pct(part['ci95'][0])} – {_pct(part['ci95'][1])}"
                if part["ci95"] else "")
    return f"{_pct(part['rate'])} ({part['hits']}/{part['total']}){interval}"


def _not_found(model: str, as_json: bool) -> None:
    """What the API answers (404 ``not_found``) for a model with no prediction in the log:
    an unknown name, most likely a typo; exit 1."""
    message = f"no model named {model!r} in the prediction log"
    if as_json:
        typer.echo(orjson.dumps({"error": {"code": "not_found", "message": message}}).decode())
    else:
        typer.echo(f"modelhost: {message}", err=True)
    raise typer.Exit(1)


def _print(model: str, out: dict) -> None:
    summary = Table(title=f"{model}: accuracy from feedback", show_header=False)
    summary.add_row("predictions", str(out["predictions"]))
    summary.add_row("with feedback", f"{out['with_feedback']} ({_pct(out['feedback_share'])})")
    for name, key in (("top-1", "top1"), (f"top-{out['topk']['k'] or 'k'}", "topk")):
        part = out[key]
        interval = (f"  95 % CI {_pct(part['ci95'][0])} – {_pct(part['ci95'][1])}"
                    if part["ci95"] else "")
        summary.add_row(name, f"{_pct(part['rate'])} ({part['hits']}/{part['total']}){interval}")
    console.print(summary)
    labels = Table(title="per label")
    for column in ("label", "predicted", "chosen", "right", "precision", "recall"):
        labels.add_column(column, justify="left" if column == "label" else "right")
    for r in out["labels"]:
        labels.add_row(r["label"], str(r["predicted"]), str(r["actual"]), str(r["hits"]),
                       _pct(r["precision"]), _pct(r["recall"]))
    console.print(labels)
    if out["confusions"]:
        confusions = Table(title="most frequent confusions")
        for column in ("users chose", "model said", "times"):
            confusions.add_column(column)
        for c in out["confusions"]:
            confusions.add_row(c["actual"], c["predicted"], str(c["count"]))
        console.print(confusions)


def _write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["label", "predicted", "actual", "hits", "precision",
                                         "recall"])
        writer.writeheader()
        writer.writerows(rows)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f} %"


def _utc(at: datetime | None) -> datetime | None:
    return at if at is None or at.tzinfo else at.replace(tzinfo=UTC)
