"""``modelhost predict`` and ``modelhost inspect``: the same preprocessing and postprocessing
as the server, run in this process on a local model file, or sent to a running server."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import httpx
import orjson
import typer
from rich.console import Console
from rich.progress import track
from rich.table import Table

from ..inputs.images import to_tensor
from ..logs import quiet_stderr
from ..postprocess import probabilities, top_k
from ..preprocessing import resolve
from ..repository import RepositoryError, load_repository
from ..runtimes.base import RuntimeUnavailable, UntrustedCode, load_runtime
from ..runtimes.convert import CONVERTIBLE
from ..settings import Settings, confine_frameworks
from ..types import FORMATS, ModelSpec, Region, RuntimeOptions
from .remote import ApiKey, key_headers, unreachable

console = Console()
Opt = typer.Option


def predict(
    target: Annotated[str, typer.Argument(help="Model file/folder, or a server URL.")],
    images: Annotated[list[Path], typer.Argument(help="Image files.", exists=True,
                                                  dir_okay=False)],
    model: Annotated[str | None, Opt(help="Model name (when several are served).")] = None,
    top: Annotated[int, Opt("--top-k", min=1, max=1000, help="Labels per image.")] = 5,
    x: Annotated[float | None, Opt(help="Point of interest, pixels from the left.")] = None,
    y: Annotated[float | None, Opt(help="Point of interest, pixels from the top.")] = None,
    crop: Annotated[float | None, Opt(help="Crop fraction around (x, y).")] = None,
    as_json: Annotated[bool, Opt("--json", help="Print JSON lines instead of tables.")] = False,
    trust_model_code: Annotated[bool, Opt("--trust-model-code",
        help="Allow Python code in the model (Lambda layers, pipeline.py).")] = False,
    verbose: Annotated[bool, Opt("--verbose", help="Show the frameworks' start-up messages.")
                       ] = False,
    api_key: ApiKey = None,
) -> None:
    """Print the top-k labels for each IMAGE."""
    confine_frameworks(Settings().cache_dir, verbose)
    options = {"top_k": top, "x": x, "y": y, "crop": crop}
    if target.startswith(("http://", "https://")):
        try:
            results = _predict_remote(target, model, images, options, api_key)
        except httpx.TransportError as exc:
            unreachable(target, exc)
    else:
        options = RuntimeOptions(trust_code=trust_model_code)
        results = _predict_local(Path(target), model, images, Region(x, y, crop), top, options,
                                 verbose)
    for path, result in zip(images, results, strict=True):
        if as_json:
            typer.echo(orjson.dumps({"file": str(path), **result}).decode())
        else:
            _print_result(path, result)


def _files(images: list[Path]):
    return track(images, description="predicting", console=console) if len(images) > 3 else images


def _predict_remote(url: str, model: str | None, images: list[Path], options: dict,
                    api_key: str | None) -> list[dict]:
    params = {k: v for k, v in options.items() if v is not None}
    with httpx.Client(base_url=url.rstrip("/"), timeout=60, headers=key_headers(api_key)
                      ) as client:
        name = model or _only_model(_served_models(client))
        results = []
        for path in _files(images):
            with path.open("rb") as handle:
                response = client.post(f"/api/models/{name}/predict", params=params,
                                       files={"image": (path.name, handle)})
            results.append(response.json())
        return results


def _served_models(client: httpx.Client) -> list[str]:
    response = client.get("/api/models")
    if response.status_code != 200:
        error = response.json().get("error", {})
        typer.echo(f"modelhost: {error.get('code')}: {error.get('message')}", err=True)
        raise typer.Exit(2)
    return [m["name"] for m in response.json()["models"]]


def _predict_local(target: Path, model: str | None, images: list[Path], region: Region,
                   k: int, options: RuntimeOptions, verbose: bool) -> list[dict]:
    spec = replace(_pick(_load(target), model), options=options)
    runtime = _runtime(spec, verbose)
    prep = resolve(spec.config, runtime.info)
    settings = Settings()
    results = []
    for path in _files(images):
        tensor = to_tensor(path.read_bytes(), prep, region, settings.max_pixels)
        probs = probabilities(runtime.predict(tensor[None])[0].reshape(-1),
                              spec.config.output_kind)
        labels = top_k(probs, spec.labels, k)
        results.append({"model": spec.name, "predictions": [
            {"label": p.label, "index": p.index, "score": round(p.score, 6)} for p in labels]})
    return results


def _print_result(path: Path, result: dict) -> None:
    if "error" in result:
        console.print(f"[red]{path}: {result['error']['code']}: {result['error']['message']}")
        return
    table = Table(title=f"{path.name} — {result.get('model', '')}", title_justify="left")
    table.add_column("label")
    table.add_column("index", justify="right")
    table.add_column("score", justify="right")
    for p in result["predictions"]:
        table.add_row(p["label"], str(p["index"]), f"{p['score']:.4f}")
    console.print(table)


def inspect(
    target: Annotated[Path, typer.Argument(help="Model file or folder.")],
    model: Annotated[str | None, Opt(help="Model name (in a repository).")] = None,
    format: Annotated[str | None, Opt(
        "--format",
        help=f"Force the model format: {', '.join(FORMATS)} [detected from the file].")] = None,
    trust_model_code: Annotated[bool, Opt("--trust-model-code",
        help="Allow Python code in the model (Lambda layers, pipeline.py).")] = False,
    input_name: Annotated[str | None, Opt(help="Input tensor of a frozen TF graph.")] = None,
    output_name: Annotated[str | None, Opt(help="Output tensor of a frozen TF graph.")] = None,
    verbose: Annotated[bool, Opt("--verbose", help="Show the frameworks' start-up messages.")
                       ] = False,
) -> None:
    """Print a model's inputs, outputs, ops, parameters, labels and preprocessing."""
    confine_frameworks(Settings().cache_dir, verbose)
    options = RuntimeOptions("native", trust_model_code, input_name, output_name)
    spec = replace(_pick(_load(target, format), model), options=options)
    runtime = _runtime(spec, verbose)
    info, prep = runtime.info, resolve(spec.config, runtime.info)
    console.print(f"[bold]{spec.name}[/] version {spec.version} · {spec.format} · "
                  f"{spec.path.name} · {info.parameters:,} parameters")
    tensors = Table("kind", "name", "dtype", "shape", title="tensors", title_justify="left")
    for kind, group in (("input", info.inputs), ("output", info.outputs)):
        for t in group:
            tensors.add_row(kind, t.name, t.dtype, str(list(t.shape)))
    console.print(tensors)
    console.print(f"ops: {', '.join(info.ops) or 'n/a'}")
    if info.graph:  # a frozen graph: every op, as the tutorials printed them to find names
        graph = Table(title="graph", title_justify="left")
        graph.add_column("op", overflow="fold")
        graph.add_column("type")
        graph.add_column("output shape")
        for name, kind, shape in info.graph:
            graph.add_row(name, kind, shape)
        console.print(graph)
    shown = ", ".join(spec.labels[:10]) + (" …" if len(spec.labels) > 10 else "")
    console.print(f"labels ({len(spec.labels)}): {shown or 'none (indices are used)'}")
    if info.whole_image:
        console.print("input: the whole image, upright (EXIF orientation applied), RGB, at its "
                      "own size, cropped only around (x, y) if asked; predict_image prepares it")
    else:
        _print_preprocessing(spec, info, prep)
    console.print(f"output: {spec.config.output_kind} (softmax unless already probabilities)")
    if spec.format in CONVERTIBLE:
        console.print("runtime: converted to ONNX and verified when served (--runtime auto)")


def _print_preprocessing(spec: ModelSpec, info, prep) -> None:
    console.print(
        f"preprocessing: {prep.size[0]}×{prep.size[1]} {prep.layout} {prep.dtype}, "
        f"{'greyscale' if prep.channels == 1 else 'BGR' if prep.bgr else 'RGB'}, "
        f"scaling {prep.scaling}"
        + (" (the model scales its own input), "
           if info.scaling and not spec.config.scaling else ", ")
        + (f"shorter side {prep.resize} then centre crop, " if prep.resize else "stretch, ")
        + f"{prep.resample} resampling"
        + (f", default crop {prep.default_crop:g} around (x, y)" if prep.default_crop else "")
    )


def _load(target: Path, fmt: str | None = None) -> list[ModelSpec]:
    try:
        return load_repository(target, fmt)
    except RepositoryError as exc:
        raise typer.BadParameter(str(exc)) from None


def _pick(specs: list[ModelSpec], name: str | None) -> ModelSpec:
    if name is None:
        return specs[0] if len(specs) == 1 else _only_model([s.name for s in specs])
    for spec in specs:
        if spec.name == name:
            return spec
    raise typer.BadParameter(f"no model named {name!r}; there are: {[s.name for s in specs]}")


def _only_model(names: list[str]):
    if len(names) != 1:
        raise typer.BadParameter(f"several models are served; choose one with --model: {names}")
    return names[0]


def _runtime(spec: ModelSpec, verbose: bool):
    try:
        with quiet_stderr(not verbose):
            return load_runtime(spec, threads=0)
    except (RuntimeUnavailable, UntrustedCode, ValueError, OSError) as exc:
        raise typer.BadParameter(str(exc)) from None
