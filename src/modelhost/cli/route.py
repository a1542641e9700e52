"""``modelhost route MODEL``: change how a running server shares a model's requests among its
served versions (``PUT /api/models/{model}/routing``), promote a version, or roll back."""

from __future__ import annotations

from typing import Annotated

import httpx
import orjson
import typer

from .remote import ApiKey, key_headers, unreachable

Opt = typer.Option


def route(
    model: Annotated[str, typer.Argument(help="The model's name.")],
    split: Annotated[list[str] | None, Opt(
        help="VERSION=WEIGHT (repeat, or comma-separate); the weight left to 100 goes to the "
             "default version, e.g. --split 2=10.")] = None,
    promote: Annotated[str | None, Opt(
        help="Send every request that names no version to this version.")] = None,
    rollback: Annotated[bool, Opt("--rollback", help="Undo the last routing change.")] = False,
    default: Annotated[str | None, Opt(help="The version answering unsplit requests.")] = None,
    sticky: Annotated[bool | None, Opt("--sticky/--no-sticky",
        help="Keep each client (API key name, else address) on one version.")] = None,
    shadow: Annotated[str | None, Opt(
        help="Also run requests on this version in the background ('none': stop).")] = None,
    url: Annotated[str, Opt(help="The server.")] = "http://127.0.0.1:8000",
    api_key: ApiKey = None,
) -> None:
    """Change MODEL's version routing on a running server; prints the routing from then on."""
    base = url.rstrip("/") + f"/api/models/{model}/routing"
    headers = key_headers(api_key)
    try:
        body = _body(base, headers, split, promote, rollback, default, sticky, shadow)
        response = httpx.put(base, json=body, headers=headers, timeout=30)
    except httpx.TransportError as exc:
        unreachable(url, exc)
    answer = response.json() if response.content else {}
    if response.status_code != 200:
        error = answer.get("error", {}) if isinstance(answer, dict) else {}
        typer.echo(f"modelhost: {error.get('message', response.text)}", err=True)
        raise typer.Exit(1)
    typer.echo(orjson.dumps({k: answer[k] for k in ("action", "routing")},
                            option=orjson.OPT_INDENT_2).decode())


def _body(base: str, headers: dict[str, str], split: list[str] | None, promote: str | None,
          rollback: bool, default: str | None, sticky: bool | None,
          shadow: str | None) -> dict:
    """The PUT body for the flags given; exactly one of --promote, --rollback or changes."""
    changes: dict = {}
    if split:
        changes["split"] = _weights(split, default or _current_default(base, headers))
    if default is not None:
        changes["default"] = default
    if sticky is not None:
        changes["sticky"] = sticky
    if shadow is not None:
        changes["shadow"] = None if shadow.lower() == "none" else shadow
    asked = [b for b in ({"promote": promote} if promote else None,
                         {"rollback": True} if rollback else None,
                         changes or None) if b]
    if len(asked) != 1:
        raise typer.BadParameter("give --promote, --rollback, or changes (--split, --default, "
                                 "--sticky, --shadow): exactly one of the three")
    return asked[0]


def _weights(pairs: list[str], default: str) -> dict[str, int]:
    """``["2=10"]`` → ``{"2": 10, default: 90}``; the server checks versions and the sum."""
    weights: dict[str, int] = {}
    for pair in (p for item in pairs for p in item.split(",") if p.strip()):
        version, _, weight = pair.partition("=")
        if not weight.strip().isdigit():
            raise typer.BadParameter(f"--split {pair}: expected VERSION=WEIGHT, e.g. 2=10")
        weights[version.strip()] = int(weight)
    rest = 100 - sum(weights.values())
    if rest > 0 and default not in weights:
        weights[default] = rest
    return weights


def _current_default(base: str, headers: dict[str, str]) -> str:
    response = httpx.get(base, headers=headers, timeout=30)
    if response.status_code != 200:
        error = response.json().get("error", {}) if response.content else {}
        typer.echo(f"modelhost: {error.get('message', response.text)}", err=True)
        raise typer.Exit(1)
    return str(response.json()["routing"]["default"])
