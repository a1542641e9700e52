"""All of modelhost's settings in one object, filled from flags, ``MODELHOST_*`` variables and
defaults. Only this module reads the environment; the CLI builds one ``Settings`` and passes it on.

Defaults are the safe ones: bind to loopback, no URL fetching, no server paths, bounded bodies,
pixels and time.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from .errors import StartupError
from .types import FORMATS, PIPELINES, Format, LogFormat, Pipeline, Precision, RuntimeMode


def default_db_url() -> str:
    """The prediction log's default home: a SQLite file in the XDG data folder."""
    import os

    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return f"sqlite:///{Path(base) / 'modelhost' / 'modelhost.db'}"


def default_cache_dir() -> Path:
    """Where converted demo models live (XDG cache convention)."""
    import os

    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "modelhost"


def confine_frameworks(cache_dir: Path, verbose: bool = False) -> None:
    """Point the frameworks' own folders under ``cache_dir`` and quiet their start-up chatter.

    Keras writes ``~/.keras/keras.json`` on import, ONNX Runtime a device id under
    ``~/.cache``, torch and matplotlib keep caches in the home folder: modelhost writes only
    under its configured folders (call this after ``Settings`` read its own defaults). Set
    before any framework is imported (they read these once); the worker and conversion
    processes inherit them.
    Variables the user set are kept. TensorFlow's C++ INFO and WARNING lines (CPU features,
    oneDNN) are hidden unless ``verbose``.
    """
    import os

    homes = {"KERAS_HOME": "keras", "TORCH_HOME": "torch", "MPLCONFIGDIR": "matplotlib",
             "TFHUB_CACHE_DIR": "tfhub", "XDG_CACHE_HOME": "cache"}
    for variable, folder in homes.items():
        os.environ.setdefault(variable, str(cache_dir / "frameworks" / folder))
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class ConfigError(StartupError, ValueError):
    """A setting names something unusable (a bad keys file, rate); start-up stops with it."""


class Settings(BaseSettings):
    """The server's configuration. Each field is also ``MODELHOST_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="MODELHOST_", extra="ignore")

    models: Path | None = Field(
        None, description="Model file or repository folder; None serves the demo models."
    )
    model_url: str | None = Field(
        None, description="http(s) URL of a model file, downloaded once into the cache."
    )
    sha256: str | None = Field(None, description="SHA-256 (hex) that model_url's file must have.")
    host: str = Field("127.0.0.1", description="Address to bind; loopback unless opened up.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0 picks a free one).")
    grpc_port: int | None = Field(
        None, ge=0, le=65535,
        description="Also serve KServe V2 over gRPC on this port (0 picks one); off if None.",
    )
    ops_port: int | None = Field(
        None, ge=0, le=65535,
        description="Also answer /healthz, /readyz and /metrics on this port, from a thread of "
                    "their own: probes stay fast while predictions saturate the main port "
                    "(0 picks one); off if None.",
    )
    keep_going: bool = Field(
        False, description="Serve the models that loaded when others fail, instead of exiting."
    )
    allow_path_root: Path | None = Field(
        None, description="Server files under this folder may be named by `path`; off if None."
    )
    allow_urls: bool = Field(False, description="Let clients name an image by http(s) URL.")
    allow_private_urls: bool = Field(
        False, description="Also fetch from loopback/private/link-local addresses (tests only)."
    )
    url_max_bytes: int = Field(20 * 2**20, gt=0, description="Largest download accepted.")
    url_timeout: float = Field(10.0, gt=0, description="Total seconds for one URL fetch.")
    url_max_redirects: int = Field(3, ge=0, description="Redirects followed, each re-vetted.")
    timeout: float = Field(30.0, gt=0, description="Deadline of a request in seconds.")
    max_body: int = Field(20 * 2**20, gt=0, description="Largest request body in bytes.")
    max_pixels: int = Field(
        25_000_000, gt=0, description="Largest image (width × height), checked before decoding."
    )
    max_queue: int = Field(256, gt=0, description="Requests waiting per model before 503.")
    replicas: int | None = Field(
        None, ge=1, description="Worker processes per model (overrides modelhost.toml)."
    )
    threads: int | None = Field(
        None, ge=0, description="ONNX Runtime intra-op threads per worker (0: runtime's choice)."
    )
    max_batch_size: int | None = Field(None, ge=1, description="Overrides modelhost.toml.")
    max_delay_ms: float | None = Field(None, ge=0, description="Overrides modelhost.toml.")
    tune: bool = Field(
        True, description="At a model's first start, measure the replicas, threads and max "
        "batch size that modelhost.toml and the flags leave open; cached (docs/models.md)."
    )
    tune_budget: float = Field(
        20.0, gt=0, description="Seconds one model's layout measurement may take in all."
    )
    drain_grace: float = Field(
        20.0, ge=0, description="Seconds in-flight requests get to finish on SIGTERM."
    )
    worker_start_timeout: float = Field(
        120.0, gt=0, description="Seconds a worker may take to load and warm up."
    )
    api_keys: Path | None = Field(
        None, description="File of named API keys (`modelhost keys add`); None: no keys needed."
    )
    protect_ops: bool = Field(
        False, description="Also require a key for /healthz, /readyz and /metrics."
    )
    rate_limit: str | None = Field(
        None, description="Requests per key (or client address), e.g. 20/s; None: unlimited."
    )
    burst: int | None = Field(
        None, gt=0, description="Requests allowed at once above the rate (default: the rate)."
    )
    rate_limit_storage: str = Field(
        "memory://", description="Where counts live: memory:// or redis://host:port/db."
    )
    allowed_origins: str = Field(
        "", description="Comma-separated origins (https://host) besides the server's own that "
        "browsers may POST from; others get 403."
    )
    allowed_hosts: str = Field(
        "", description="Host names the server answers to (comma-separated, * for any); by "
        "default loopback names when bound to loopback (DNS rebinding), else any."
    )
    header_timeout: float = Field(
        10.0, gt=0, description="Seconds a connection has to send a request's line and headers."
    )
    body_timeout: float = Field(
        60.0, gt=0, description="Seconds a request has to send its body once headers are in."
    )
    max_header_bytes: int = Field(
        16 * 1024, ge=1024, description="Largest request line plus headers, in bytes."
    )
    max_connections_per_client: int = Field(
        100, ge=0, description="Open connections per client address (0: no cap; behind a proxy)."
    )
    worker_memory_limit: int | None = Field(
        None, ge=64 * 2**20, description="Address-space bytes per worker process (RLIMIT_AS); "
        "an allocation past it fails in that worker only. None: no limit."
    )
    cache_dir: Path = Field(default_factory=default_cache_dir, description="Converted models.")
    format: Format | None = Field(
        None, description=f"Force the model format ({', '.join(FORMATS)}); detected from the "
        "file if None."
    )
    pipeline: Pipeline | None = Field(
        None, description=f"The training pipeline ({', '.join(PIPELINES)}) of models whose "
        "modelhost.toml names none (docs/models.md); modelhost's default (a Pillow resize) if "
        "None."
    )
    runtime: RuntimeMode = Field(
        "auto", description="auto: convert Keras/TF/torch models to ONNX when verified; "
        "native: the framework's own runtime; onnx: conversion required."
    )
    providers: str | None = Field(
        None, description="ONNX Runtime execution providers in order, e.g. openvino,cpu or "
        "cuda:device_id=0,cpu (overrides [runtime] providers); a later cpu is the only fallback."
    )
    precision: Precision | None = Field(
        None, description="int8: serve the file `modelhost optimize --int8` wrote and verified "
        "(overrides [runtime] precision)."
    )
    trust_model_code: bool = Field(
        False, description="Allow Python code inside models (Lambda layers, pipeline.py)."
    )
    input_name: str | None = Field(None, description="Input tensor of a frozen TF graph.")
    output_name: str | None = Field(None, description="Output tensor of a frozen TF graph.")
    watch: bool = Field(
        False, description="Follow the model folder: load new versions, drop removed models."
    )
    model_control: bool = Field(
        False, description="Allow /v2/repository/models/{name}/load and /unload (the "
        "repository's models only)."
    )
    convert_timeout: float = Field(
        600.0, gt=0, description="Seconds one model's conversion to ONNX may take."
    )
    log_level: str = Field("info", description="debug, info, warning or error.")
    log_format: LogFormat = Field(
        "auto", description="Log lines on stderr: json, text, or auto (text when stderr is a "
        "terminal, JSON otherwise)."
    )
    access_log: bool = Field(False, description="uvicorn's access log (predictions log anyway).")
    db: str = Field(
        default_factory=default_db_url,
        description="Prediction log and feedback database: sqlite:///FILE or "
                    "postgresql+psycopg://USER:PASSWORD@HOST/DB.",
    )
    log_predictions: bool = Field(True, description="Record every prediction in the database.")
    store_images: Path | None = Field(
        None, description="Also keep each input image here, named by its sha256 (off if None)."
    )
    allow_new_labels: bool = Field(
        False, description="Accept feedback labels that are not among the model's labels."
    )
    retention_days: float | None = Field(
        None, gt=0, description="Delete predictions older than this many days (kept if None)."
    )
    journal_dir: Path | None = Field(
        None, description="Where records wait for the database (default: under cache_dir)."
    )
