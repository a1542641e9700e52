"""``modelhost serve``: flags → Settings → assembly.serve."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from .. import logs
from ..errors import StartupError
from ..settings import Settings, confine_frameworks
from ..supply.download import is_url
from ..types import FORMATS, PIPELINES

Opt = typer.Option


def settings_of(params: dict[str, Any]) -> Settings:
    """``Settings`` from ``serve``'s parameters as typer passes them (unset flags left out, so
    environment variables and defaults apply)."""
    flags = {k: v for k, v in params.items() if v is not None and v is not False}
    if flags.pop("no_log_predictions", False):
        flags["log_predictions"] = False
    if flags.pop("no_tune", False):
        flags["tune"] = False
    models = flags.get("models")
    if isinstance(models, str) and is_url(models):
        flags["model_url"] = flags.pop("models")
    return Settings(**flags)


def serve(
    models: Annotated[str | None, typer.Argument(
        help="Model file, repository folder or http(s) URL of a model file (with --sha256). "
             "Without it, the demo models are served.")] = None,
    host: Annotated[str | None, Opt(help="Address to bind [default: 127.0.0.1].")] = None,
    port: Annotated[int | None, Opt(help="Port [default: 8000; 0 picks a free one].")] = None,
    grpc_port: Annotated[int | None, Opt(
        help="Also serve KServe V2 over gRPC on this port (needs modelhost[grpc]).")] = None,
    ops_port: Annotated[int | None, Opt(
        help="Also answer /healthz, /readyz and /metrics on this port, from a thread of their "
             "own: probes stay fast while predictions saturate the main port.")] = None,
    keep_going: Annotated[bool, Opt("--keep-going",
        help="Serve the models that load; report the others on /readyz.")] = False,
    allow_path_root: Annotated[Path | None, Opt(
        help="Let clients name image files under this folder with `path`.")] = None,
    allow_urls: Annotated[bool, Opt("--allow-urls", help="Let clients give image URLs.")] = False,
    allow_private_urls: Annotated[bool, Opt("--allow-private-urls",
        help="Also fetch from private and loopback addresses (testing only).")] = False,
    timeout: Annotated[float | None, Opt(help="Request deadline in seconds [30].")] = None,
    max_body: Annotated[int | None, Opt(help="Largest request body in bytes [20 MiB].")] = None,
    max_pixels: Annotated[int | None, Opt(help="Largest image in pixels [25,000,000].")] = None,
    max_queue: Annotated[int | None, Opt(
        help="Queued requests per model before 503 [256].")] = None,
    replicas: Annotated[int | None, Opt(
        help="Worker processes per model [modelhost.toml, else measured at first start].")
    ] = None,
    threads: Annotated[int | None, Opt(
        help="ONNX Runtime threads per worker [modelhost.toml, else measured at first start; "
             "0: ONNX Runtime's choice].")] = None,
    max_batch_size: Annotated[int | None, Opt(
        help="Largest batch [modelhost.toml, else measured at first start].")] = None,
    max_delay_ms: Annotated[float | None, Opt(
        help="Wait this long for a fuller batch [modelhost.toml, else 0].")] = None,
    no_tune: Annotated[bool, Opt("--no-tune",
        help="Do not measure the replicas, threads and max batch size that modelhost.toml and "
             "these flags leave open; use the defaults.")] = False,
    tune_budget: Annotated[float | None, Opt(
        help="Seconds a model's first start may spend measuring its layout [20].")] = None,
    drain_grace: Annotated[float | None, Opt(
        help="Seconds to finish requests on SIGTERM [20].")] = None,
    api_keys: Annotated[Path | None, Opt(
        help="Require an API key from this file [no keys needed].")] = None,
    protect_ops: Annotated[bool, Opt("--protect-ops",
        help="Require the key for health, readiness and metrics too.")] = False,
    rate_limit: Annotated[str | None, Opt(
        help="Per key or address, e.g. 20/s [unlimited].")] = None,
    burst: Annotated[int | None, Opt(help="Requests allowed at once [the rate].")] = None,
    rate_limit_storage: Annotated[str | None, Opt(
        help="memory:// or redis://host:port (shared by replicas) [memory://].")] = None,
    allowed_origins: Annotated[str | None, Opt(
        help="Other origins browsers may POST from (comma-separated) [none].")] = None,
    allowed_hosts: Annotated[str | None, Opt(
        help="Host names to answer to [loopback names when bound to loopback].")] = None,
    header_timeout: Annotated[float | None, Opt(help="Seconds to send headers [10].")] = None,
    body_timeout: Annotated[float | None, Opt(help="Seconds to send a request body [60].")] = None,
    max_header_bytes: Annotated[int | None, Opt(help="Largest request headers [16 KiB].")] = None,
    max_connections_per_client: Annotated[int | None, Opt(
        help="Open connections per client address [100; 0: no cap].")] = None,
    worker_memory_limit: Annotated[int | None, Opt(
        help="Address-space bytes per worker process [no limit].")] = None,
    cache_dir: Annotated[Path | None, Opt(
        help="Where converted models are kept [~/.cache/modelhost].")] = None,
    format: Annotated[str | None, Opt("--format",
        help=f"Force the model format: {', '.join(FORMATS)} [detected from the file].")] = None,
    pipeline: Annotated[str | None, Opt(
        help="Training pipeline of a model without one in modelhost.toml: "
             f"{', '.join(PIPELINES)}.")] = None,
    runtime: Annotated[str | None, Opt(
        help="auto (convert to ONNX when verified), native or onnx [auto].")] = None,
    providers: Annotated[str | None, Opt(
        help="Execution providers in order, e.g. openvino,cpu or cuda:device_id=0,cpu; each "
             "verified against the CPU; a later cpu is the only fallback [cpu].")] = None,
    precision: Annotated[str | None, Opt(
        help="int8: serve the model `modelhost optimize --int8` verified [fp32].")] = None,
    trust_model_code: Annotated[bool, Opt("--trust-model-code",
        help="Allow Python code in models (Keras Lambda layers, pipeline.py).")] = False,
    input_name: Annotated[str | None, Opt(help="Input tensor of a frozen TF graph.")] = None,
    output_name: Annotated[str | None, Opt(help="Output tensor of a frozen TF graph.")] = None,
    sha256: Annotated[str | None, Opt(help="SHA-256 a model URL's file must have.")] = None,
    watch: Annotated[bool, Opt("--watch",
        help="Follow the model folder: swap in new versions, drop removed models.")] = False,
    model_control: Annotated[bool, Opt("--model-control",
        help="Allow loading and unloading the folder's models over /v2/repository.")] = False,
    log_level: Annotated[str | None, Opt(help="debug, info, warning, error [info].")] = None,
    log_format: Annotated[str | None, Opt(
        help="json, text or auto [auto: text when stderr is a terminal, else json].")] = None,
    db: Annotated[str | None, Opt(help="Prediction log database URL: sqlite:///FILE or "
                                  "postgresql+psycopg://... [a SQLite file in ~/.local/share].")
                  ] = None,
    no_log_predictions: Annotated[bool, Opt("--no-log-predictions",
        help="Do not record predictions (feedback then has nothing to refer to).")] = False,
    store_images: Annotated[Path | None, Opt(
        help="Keep every input image in this folder, named by its sha256 [not kept].")] = None,
    allow_new_labels: Annotated[bool, Opt("--allow-new-labels",
        help="Accept feedback labels the model does not have.")] = False,
    retention_days: Annotated[float | None, Opt(
        help="Delete logged predictions older than this many days [kept].")] = None,
    journal_dir: Annotated[Path | None, Opt(
        help="Where records wait while the database is away [under the cache dir].")] = None,
) -> None:
    """Serve MODELS (or the demo models) over HTTP."""
    try:
        settings = settings_of(locals())
    except ValidationError as exc:
        raise typer.BadParameter(str(exc)) from None
    logs.configure(settings.log_level, settings.log_format)
    confine_frameworks(settings.cache_dir, verbose=settings.log_level.lower() == "debug")
    from ..assembly import serve as run

    try:
        code = run(settings)
    except StartupError as exc:
        typer.echo(f"modelhost: {exc}", err=True)
        raise typer.Exit(2) from None
    raise typer.Exit(code)
