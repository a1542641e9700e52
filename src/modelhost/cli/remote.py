"""What ``predict URL`` and ``bench`` share to talk to a running server: the API key option,
and one clear line (not a traceback, not a run of failures) when nothing answers."""

from __future__ import annotations

from typing import Annotated, NoReturn

import httpx
import typer

ApiKey = Annotated[str | None, typer.Option(
    "--api-key", envvar="MODELHOST_API_KEY", show_envvar=False,
    help="API key for a server started with --api-keys [$MODELHOST_API_KEY].")]
BENCH_HEADER = "X-Modelhost-Bench"  # marks load-test traffic (left out of accuracy figures)


def key_headers(api_key: str | None) -> dict[str, str]:
    return {"X-API-Key": api_key} if api_key else {}


def unreachable(url: str, exc: httpx.TransportError) -> NoReturn:
    """Exit 2 with one line saying that nothing answers at ``url``."""
    why = "connection refused" if isinstance(exc, httpx.ConnectError) else type(exc).__name__
    typer.echo(f"modelhost: nothing answers at {url} ({why})", err=True)
    raise typer.Exit(2)


def check_reachable(url: str, api_key: str | None) -> None:
    """Fail at once, before a run, when the server is down or refuses the key."""
    try:
        response = httpx.get(url.rstrip("/") + "/api/models", headers=key_headers(api_key),
                             timeout=10)
    except httpx.TransportError as exc:
        unreachable(url, exc)
    if response.status_code == 401:
        typer.echo(f"modelhost: {url} wants an API key: --api-key or MODELHOST_API_KEY",
                   err=True)
        raise typer.Exit(2)
