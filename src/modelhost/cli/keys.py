"""``modelhost keys add NAME --file F``: create an API key, print its secret once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..access.keys import KeysFileError, add_key

app = typer.Typer(help="Manage API keys (the file `serve --api-keys` reads).",
                  no_args_is_help=True, rich_markup_mode=None)


@app.command()
def add(
    name: Annotated[str, typer.Argument(help="Who the key is for; appears in logs.")],
    file: Annotated[Path, typer.Option("--file", help="The keys file (created if missing).")],
) -> None:
    """Add a key called NAME; its secret is printed once and stored only as a hash."""
    try:
        secret = add_key(file, name)
    except KeysFileError as exc:
        typer.echo(f"modelhost: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(secret)
