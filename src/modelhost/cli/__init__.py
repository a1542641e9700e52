"""The ``modelhost`` command: serve, predict, inspect, prepare, bench, report, route, optimize,
tune. Each command parses its flags and calls library code; nothing else here."""

from __future__ import annotations

import typer

from .bench import bench
from .keys import app as keys
from .local import inspect, predict
from .optimize import optimize
from .prepare import prepare
from .report import report
from .route import route
from .serve import serve
from .tune import tune

app = typer.Typer(
    help="Serve a trained image model as a fast, safe, observable web API.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help: rich markup would eat every "[...]" (the defaults, "modelhost[grpc]") and
    # show on/off flags as taking a <bool> value.
    rich_markup_mode=None,
)
app.command()(serve)
app.command()(predict)
app.command()(inspect)
app.command()(prepare)
app.command()(bench)
app.command()(report)
app.command()(route)
app.command()(optimize)
app.command()(tune)
app.add_typer(keys, name="keys")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
