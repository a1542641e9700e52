"""``modelhost predict`` and ``modelhost inspect``: the same preprocessing and postprocessing
as the server, run in this process on a local model file, or sent to a running server."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import httpx
import numpy as np
import orjson
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import track
from rich.table import Table

from ..errors import StartupError
from ..inputs.drift import measure
from ..inputs.images import exact_pixels, to_tensor
from ..inputs.reference import library_pixels
from ..logs import quiet_stderr
from ..postprocess import probabilities, top_k
from ..preprocessing import describe as describe_preprocessing
from ..preprocessing import resolve
from ..repository import RepositoryError, load_repository
from ..runtimes.base import RuntimeUnavailable, UntrustedCode, first_line, load_runtime
from ..runtimes.providers import ProviderError
from ..settings import Settings, confine_frameworks
from ..supply.convert import CONVERTIBLE, prepare
from ..types import FORMATS, PIPELINES, ModelSpec, Preprocessing, Region, RuntimeOptions
from .remote import ApiKey, key_headers, unreachable

console = Console()
Opt = typer.Option
PROVIDERS_HELP = ("Execution providers in order, e.g. openvino,cpu or cuda,cpu; a later cpu is "
                  "the only fallback [cpu].")
PRECISION_HELP = "int8: the model `modelhost optimize --int8` verified [fp32]."


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
    providers: Annotated[str | None, Opt(help=PROVIDERS_HELP)] = None,
    precision: Annotated[str | None, Opt(help=PRECISION_HELP)] = None,
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
        runtime_options = RuntimeOptions(trust_code=trust_model_code)
        spec = _accelerated(replace(_pick(_load(Path(target)), model), options=runtime_options),
                            providers, precision)
        results = _predict_local(spec, images, Region(x, y, crop), top, verbose)
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


def _predict_local(spec: ModelSpec, images: list[Path], region: Region, k: int,
                   verbose: bool) -> list[dict]:
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
    pipeline: Annotated[str | None, Opt(help="Training pipeline, when modelhost.toml names "
                                        f"none: {', '.join(PIPELINES)}.")] = None,
    image: Annotated[Path | None, Opt(help="Show the tensor this photo becomes, and its "
                                      "difference from the training library's own pipeline.",
                                      exists=True, dir_okay=False)] = None,
    providers: Annotated[str | None, Opt(help=PROVIDERS_HELP)] = None,
    precision: Annotated[str | None, Opt(help=PRECISION_HELP)] = None,
    verbose: Annotated[bool, Opt("--verbose", help="Show the frameworks' start-up messages.")
                       ] = False,
) -> None:
    """Print a model's inputs, outputs, ops, parameters, labels and preprocessing."""
    confine_frameworks(Settings().cache_dir, verbose)
    options = RuntimeOptions("native", trust_model_code, input_name, output_name)
    spec = _accelerated(replace(_pick(_load(target, format, pipeline), model), options=options),
                        providers, precision)
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
        console.print(f"pipeline: {describe_preprocessing(prep)}", soft_wrap=True)
        if prep.decode == "fast":
            drift = measure(runtime.predict, prep, spec.config.output_kind, spec.path.parent,
                            Settings().max_pixels)
            console.print(f"decode fast: {drift.describe()}", soft_wrap=True)
    console.print(f"output: {spec.config.output_kind} (softmax unless already probabilities)")
    if spec.format in CONVERTIBLE:
        console.print("runtime: converted to ONNX and verified when served (--runtime auto)")
    if info.provider:
        console.print(f"provider: {info.provider} ({info.provider_note or 'the default'}); "
                      f"precision {spec.config.precision}", markup=False)
    if image is not None:
        _print_image(image.read_bytes(), image.name, prep)


def _print_preprocessing(spec: ModelSpec, info, prep) -> None:
    console.print(
        f"preprocessing: {prep.size[0]}×{prep.size[1]} {prep.layout} {prep.dtype}, "
        f"{'greyscale' if prep.channels == 1 else 'BGR' if prep.bgr else 'RGB'}, "
        f"scaling {prep.scaling}"
        + (" (the model scales its own input)" if info.scaling and not spec.config.scaling
           else "")
        + (f", default crop {prep.default_crop:g} around (x, y)" if prep.default_crop else ""),
        soft_wrap=True,
    )


def _accelerated(spec: ModelSpec, providers: str | None, precision: str | None) -> ModelSpec:
    """``spec`` with ``--providers``/``--precision`` (and ``[runtime]``) applied, as served: a
    Keras/TF/torch model is converted to ONNX (cached) when acceleration is asked for."""
    from ..supply.accelerate import accelerated  # the server's own rule

    try:
        settings = Settings(providers=providers, precision=precision)  # type: ignore[arg-type]  # pydantic validates the text
        served = spec
        if spec.format in CONVERTIBLE and (settings.providers or settings.precision == "int8"
                                           or spec.config.precision == "int8"
                                           or spec.config.providers):
            served = prepare(replace(spec, options=replace(spec.options, runtime="onnx")),
                             settings.cache_dir, settings.convert_timeout)
        return accelerated(spec, served, settings)
    except (ValidationError, StartupError) as exc:  # a bad option, conversion, INT8 record
        raise typer.BadParameter(first_line(exc)) from None


def _print_image(data: bytes, name: str, prep: Preprocessing) -> None:
    """The tensor the photo becomes (per-channel range and mean) and how far the pixels are
    from the training library's own pipeline, when that library is installed."""
    tensor = to_tensor(data, prep, Region(), Settings().max_pixels)
    channels = tensor if prep.layout == "NCHW" else tensor.transpose(2, 0, 1)
    table = Table("channel", "min", "max", "mean",
                  title=f"{name} → tensor {list(tensor.shape)} {tensor.dtype}",
                  title_justify="left")
    names = ["grey"] if prep.channels == 1 else (["B", "G", "R"] if prep.bgr or
                                                 prep.scaling == "caffe" else ["R", "G", "B"])
    for label, values in zip(names, channels, strict=True):
        table.add_row(label, f"{values.min():.6g}", f"{values.max():.6g}", f"{values.mean():.6g}")
    console.print(table)
    reference = library_pixels(data, prep)
    if reference is None:
        console.print("reference: the training library is not installed; nothing to compare")
        return
    expected, library = reference
    ours = exact_pixels(data, prep, Region(), Settings().max_pixels)
    worst = float(np.abs(ours - expected).max()) if ours.shape == expected.shape else None
    console.print(f"max |Δ| against {library}'s own pipeline (pixels 0–255, before scaling): "
                  + ("shapes differ" if worst is None else f"{worst:g}")
                  + (" (decode = fast serves different pixels; see the drift above)"
                     if prep.decode == "fast" else ""), soft_wrap=True)


def _load(target: Path, fmt: str | None = None,
          pipeline: str | None = None) -> list[ModelSpec]:
    try:
        return load_repository(target, fmt, pipeline)
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
    except (RuntimeUnavailable, UntrustedCode, ProviderError, ValueError, OSError) as exc:
        raise typer.BadParameter(str(exc)) from None
