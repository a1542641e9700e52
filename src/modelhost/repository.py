"""Turn a model file or a repository folder into :class:`ModelSpec` records.

Layouts understood::

    model.onnx (+ labels.txt, modelhost.toml beside it)       one model, named after the file
    cats_dogs/ model.onnx labels.txt [modelhost.toml]         one model folder
    cats_dogs/ 1/model.onnx 2/model.onnx labels.txt           numbered versions; the highest
                                                              serves, or those [versions] names
    models/ cats_dogs/ ... theme/ ...                         a repository of model folders

Nothing here loads a runtime: it only finds files and reads text, so errors are fast and name the
file and the reason.
"""

from __future__ import annotations

import tomllib
import zipfile
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from .errors import StartupError
from .inputs import pipelines
from .routing import PolicyError, policy_of
from .runtimes import providers
from .types import (
    DECODES,
    LAYOUTS,
    OUTPUT_KINDS,
    PIPELINES,
    PRECISIONS,
    SCALINGS,
    ModelConfig,
    ModelSpec,
    VersionPolicy,
)

MODEL_SUFFIXES = {
    ".onnx": "onnx",
    ".keras": "keras",
    ".h5": "keras",
    ".pb": "tf_frozen",
    ".pt": "torchscript",
    ".pt2": "torch_export",
}
CONFIG_NAME = "modelhost.toml"
LABELS_NAME = "labels.txt"
MAX_LABELS_BYTES = 16 * 2**20  # ImageNet-21k's 21,843 labels take under 1 MiB
MAX_LABEL_CHARS = 1000  # a label is shown on the page and stored with every feedback


class RepositoryError(StartupError):
    """A model that cannot be described: the message names the file and the reason."""


def load_repository(root: Path, fmt: str | None = None,
                    pipeline: str | None = None) -> list[ModelSpec]:
    """Every model under ``root`` (a file, a model folder or a folder of model folders);
    ``fmt`` forces the format (``serve --format``) where detection gets it wrong; ``pipeline``
    (``serve --pipeline``) names the training pipeline of models whose modelhost.toml does not,
    e.g. a single file served without one."""
    root = root.expanduser()
    if not root.exists():
        raise RepositoryError(f"{root}: no such file or folder")
    if root.is_file():
        specs = [_single_file(root, fmt)]
    elif _model_file(root) or _version_dirs(root):
        specs = [_model_folder(root)]
    else:
        specs = [_model_folder(d) for d in sorted(root.iterdir()) if d.is_dir() and _is_model(d)]
    if not specs:
        raise RepositoryError(f"{root}: no model files found (looked for {_known()})")
    if fmt is not None:
        specs = [_for_each_version(s, lambda v: replace(v, format=fmt)) for s in specs]
    if pipeline is not None:
        specs = [_for_each_version(s, lambda v: _with_pipeline(v, pipeline)) for s in specs]
    return specs


def _for_each_version(spec: ModelSpec, change: Callable[[ModelSpec], ModelSpec]) -> ModelSpec:
    """``change`` applied to ``spec`` and to each of its other served versions."""
    return replace(change(spec), others=tuple(change(o) for o in spec.others))


def _with_pipeline(spec: ModelSpec, name: str) -> ModelSpec:
    """``spec`` with the ``--pipeline`` given on the command line, unless its modelhost.toml
    names one (the file is the more specific statement)."""
    config = spec.config
    if config.pipeline is not None:
        return spec
    if name not in PIPELINES:
        raise RepositoryError(f"--pipeline {name}: expected one of {list(PIPELINES)}")
    if config.resample is not None and config.resample not in pipelines.INTERPOLATIONS[name]:
        raise RepositoryError(f"{spec.name}: resample = {config.resample!r} is not one of the "
                              f"{name} pipeline's {list(pipelines.INTERPOLATIONS[name])}")
    if config.resize and name != "torchvision":
        raise RepositoryError(f"{spec.name}: resize applies only with the torchvision pipeline, "
                              f"not --pipeline {name}")
    return replace(spec, config=replace(config, pipeline=name))


def _known() -> str:
    return ", ".join(sorted(MODEL_SUFFIXES)) + ", saved_model/, pipeline.py"


def _is_model(folder: Path) -> bool:
    return not folder.name.startswith(".") and bool(_model_file(folder) or _version_dirs(folder))


def _single_file(path: Path, forced: str | None) -> ModelSpec:
    fmt = forced or _format_of(path)
    if fmt is None:
        raise RepositoryError(f"{path}: unknown model format (expected one of {_known()})")
    folder = path.parent
    return ModelSpec(
        name=_clean_name(path.stem),
        version="1",
        path=path,
        format=fmt,
        **_labels(folder / LABELS_NAME),
        config=read_config(folder / CONFIG_NAME),
        versions=("1",),
    )


def _model_folder(folder: Path) -> ModelSpec:
    """The folder's model; with numbered versions, the highest served one, carrying the
    other served versions (``[versions] serve``) in ``others``."""
    versions = _version_dirs(folder)
    if not versions:
        return _version_spec(folder, folder, "1", ("1",))
    policy, replicas = _policy(folder / CONFIG_NAME, versions)
    specs = [_version_spec(folder, folder / v, v, tuple(versions), policy, replicas.get(v))
             for v in policy.served]
    return replace(specs[-1], others=tuple(specs[:-1]))


def _version_spec(folder: Path, model_dir: Path, version: str, versions: tuple[str, ...],
                  policy: VersionPolicy | None = None, replicas: int | None = None) -> ModelSpec:
    model_file = _model_file(model_dir)
    if model_file is None:
        raise RepositoryError(f"{model_dir}: no model file (looked for {_known()})")
    labels_file = _first_existing(model_dir / LABELS_NAME, folder / LABELS_NAME)
    config_file = _first_existing(model_dir / CONFIG_NAME, folder / CONFIG_NAME)
    config = read_config(config_file, versions_allowed=policy is not None
                         and config_file == folder / CONFIG_NAME)
    return ModelSpec(
        name=_clean_name(folder.name),
        version=version,
        path=model_file,
        format=_format_of(model_file) or "unknown",
        **_labels(labels_file),
        config=config if replicas is None else replace(config, replicas=replicas),
        versions=versions,
        policy=policy,
    )


def _policy(path: Path, available: list[str]) -> tuple[VersionPolicy, dict[str, int]]:
    """The folder's ``[versions]`` section read against its version folders (none: the
    highest serves alone)."""
    table = _read_toml(path).get("versions", {}) if path.is_file() else {}
    if not isinstance(table, dict):
        raise RepositoryError(f"{path}: [versions] must be a table")
    try:
        return policy_of(table, available)
    except PolicyError as exc:
        raise RepositoryError(f"{path}: versions.{exc}") from None


def each_version(spec: ModelSpec) -> list[ModelSpec]:
    """Every served version of ``spec``'s model, each on its own: its other versions, then
    itself (the highest)."""
    return [*spec.others, replace(spec, others=())]


def _first_existing(*paths: Path) -> Path:
    return next((p for p in paths if p.exists()), paths[-1])


def _version_dirs(folder: Path) -> list[str]:
    """Numbered subfolders holding a model, sorted numerically."""
    names = [d.name for d in folder.iterdir() if d.is_dir() and d.name.isdigit()]
    return sorted((n for n in names if _model_file(folder / n)), key=int)


def _model_file(folder: Path) -> Path | None:
    for name in ("model.onnx", "model.keras", "model.h5", "model.pb", "model.pt", "model.pt2"):
        if (folder / name).is_file():
            return folder / name
    if (folder / "saved_model" / "saved_model.pb").is_file():
        return folder / "saved_model"
    if (folder / "saved_model.pb").is_file():
        return folder
    for name in ("pipeline.py", "model.py"):
        if (folder / name).is_file():
            return folder / name
    candidates = sorted(p for p in folder.iterdir()  # not the INT8 copy `optimize` writes
                        if p.is_file() and p.suffix != ".py" and not p.name.endswith(".int8.onnx")
                        and _format_of(p))
    return candidates[0] if len(candidates) == 1 else None


def _format_of(path: Path) -> str | None:
    """The format from the name, else from the first bytes (a model saved under another
    name); None when neither tells."""
    if path.is_dir():
        return "tf_savedmodel" if (path / "saved_model.pb").exists() else None
    if path.suffix == ".py":
        return "python"
    if path.name == "saved_model.pb":
        return "tf_savedmodel"
    return MODEL_SUFFIXES.get(path.suffix.lower()) or _sniff(path)


def _sniff(path: Path) -> str | None:
    """HDF5 → Keras; zip archives by their members (TorchScript, torch.export, .keras)."""
    if path.suffix.lower() in (".txt", ".toml", ".json", ".md", ".csv"):
        return None
    try:
        with path.open("rb") as handle:
            head = handle.read(8)
        if head == b"\x89HDF\r\n\x1a\n":
            return "keras"
        if not zipfile.is_zipfile(path):
            return None
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return None
    if "config.json" in names and "model.weights.h5" in names:
        return "keras"
    if any(n.endswith("archive_format") for n in names):
        return "torch_export"
    if any("/code/" in n or n.endswith("constants.pkl") for n in names):
        return "torchscript"
    return None


def _clean_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return cleaned.strip("._") or "model"


def read_labels(path: Path) -> tuple[str, ...]:
    """One label per line in index order; blank trailing lines ignored; none → empty tuple.

    Refused (RepositoryError naming the file and line): a file over ``MAX_LABELS_BYTES``, a
    line over ``MAX_LABEL_CHARS``, and a label that repeats an earlier one, since feedback
    names the label and two outputs with one name could not be told apart.
    """
    if not path.is_file():
        return ()
    try:
        if path.stat().st_size > MAX_LABELS_BYTES:
            raise RepositoryError(f"{path.name}: over {MAX_LABELS_BYTES // 2**20} MiB; one label "
                                  "per line is expected")
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise RepositoryError(f"{path.name}: cannot read labels ({exc.__class__.__name__})"
                              ) from exc
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    _check_labels(path, lines)
    return tuple(lines)


def _check_labels(path: Path, labels: list[str]) -> None:
    first: dict[str, int] = {}
    for number, label in enumerate(labels, 1):
        if len(label) > MAX_LABEL_CHARS:
            raise RepositoryError(f"{path.name} line {number}: {len(label):,} characters "
                                  f"(at most {MAX_LABEL_CHARS:,}); one label per line")
        if label and label in first:
            raise RepositoryError(f"{path.name} line {number}: {label[:80]!r} repeats line "
                                  f"{first[label]} (feedback by label would be ambiguous)")
        first.setdefault(label, number)


def _labels(path: Path) -> dict[str, Any]:
    """``labels`` for a ModelSpec, or the ``problem`` that makes the model fail to load."""
    try:
        return {"labels": read_labels(path)}
    except RepositoryError as exc:
        return {"labels": (), "problem": str(exc)}


_SECTIONS: dict[str, dict[str, str]] = {
    "input": {
        "size": "size", "layout": "layout", "scaling": "scaling", "mean": "mean", "std": "std",
        "bgr": "bgr", "resize": "resize", "resample": "resample", "crop": "default_crop",
        "pipeline": "pipeline", "decode": "decode", "antialias": "antialias",
        "central_crop": "central_crop", "keep_aspect_ratio": "aspect_crop",
        "crop_to_aspect_ratio": "aspect_crop",
    },
    "output": {"kind": "output_kind", "top_k": "top_k"},
    "batching": {"max_batch_size": "max_batch_size", "max_delay_ms": "max_delay_ms"},
    "workers": {"replicas": "replicas", "threads": "threads"},
    "runtime": {"providers": "providers", "tolerance": "tolerance", "precision": "precision",
                "replicas_per_gpu": "replicas_per_gpu", "gpu_memory_mb": "gpu_memory_mb"},
}
_CHOICES: dict[str, tuple[Any, ...]] = {
    "layout": LAYOUTS, "scaling": SCALINGS, "pipeline": PIPELINES, "decode": DECODES,
    "output_kind": OUTPUT_KINDS, "precision": PRECISIONS,
}


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RepositoryError(f"{path}: not valid TOML ({exc})") from exc


def read_config(path: Path, versions_allowed: bool = False) -> ModelConfig:
    """Parse ``modelhost.toml``; every error names the file, the key and the problem.
    ``[versions]`` (read by :func:`_policy`) belongs only in the modelhost.toml of a folder
    with numbered version folders."""
    if not path.is_file():
        return ModelConfig()
    data = _read_toml(path)
    values: dict[str, Any] = {}
    for section, table in data.items():
        if section == "versions":
            if not versions_allowed:
                raise RepositoryError(f"{path}: [versions] belongs in the modelhost.toml of a "
                                      "model folder with numbered version folders (1/, 2/, …)")
            continue
        keys = _SECTIONS.get(section)
        if keys is None or not isinstance(table, dict):
            raise RepositoryError(f"{path}: unknown section [{section}] "
                                  f"(known: {[*_SECTIONS, 'versions']})")
        for key, value in table.items():
            if key not in keys:
                raise RepositoryError(f"{path}: [{section}] unknown key {key!r}")
            values[keys[key]] = _checked(path, f"{section}.{key}", keys[key], value)
        if section == "input":
            _check_pipeline(path, table)
    pinned = tuple(name for name in ("replicas", "threads", "max_batch_size") if name in values)
    return ModelConfig(**values, pinned=pinned)


# Keys that belong to one training pipeline only (any other pipeline would ignore them).
_PIPELINE_KEYS = {
    "resize": ("torchvision", None), "antialias": ("tf",), "central_crop": ("tf",),
    "keep_aspect_ratio": ("keras",), "crop_to_aspect_ratio": ("keras-dataset",),
}


def _check_pipeline(path: Path, table: dict[str, Any]) -> None:
    """A key must belong to the chosen pipeline, and ``resample`` must be one of its
    interpolations: a setting that would be silently ignored is an error."""
    name = table.get("pipeline")
    for key, owners in _PIPELINE_KEYS.items():
        if key in table and name not in owners:
            wanted = " or ".join(f'pipeline = "{o}"' if o else "no pipeline" for o in owners)
            raise RepositoryError(f"{path}: input.{key} applies only with {wanted}"
                                  + (f" (not {name!r})" if name else ""))
    allowed = pipelines.INTERPOLATIONS[name or ""]
    if "resample" in table and table["resample"] not in allowed:
        raise RepositoryError(f"{path}: input.resample = {table['resample']!r}: the "
                              f"{name or 'default'} pipeline's interpolations are "
                              f"{list(allowed)}")


def _checked(path: Path, where: str, field_name: str, value: Any) -> Any:
    """Validate one value against ModelConfig's field type; return it normalised."""
    def bad(why: str) -> RepositoryError:
        return RepositoryError(f"{path}: {where} = {value!r}: {why}")

    if field_name in _CHOICES and value not in _CHOICES[field_name]:
        raise bad(f"expected one of {list(_CHOICES[field_name])}")
    if field_name == "size":
        if not (isinstance(value, list) and len(value) == 2
                and all(isinstance(v, int) and v > 0 for v in value)):
            raise bad("expected [width, height] of positive integers")
        return (value[0], value[1])
    if field_name in ("mean", "std"):
        if not (isinstance(value, list) and value
                and all(isinstance(v, int | float) for v in value)):
            raise bad("expected a list of numbers, one per channel")
        if field_name == "std" and any(v == 0 for v in value):
            raise bad("std must not be zero")
        return tuple(float(v) for v in value)
    if field_name == "providers":
        try:
            return providers.from_toml(value)
        except ValueError as exc:
            raise bad(str(exc)) from None
    if field_name == "tolerance":
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 1:
            raise bad("expected a largest |Δp| between 0 and 1")
        return float(value)
    if field_name == "resample" and not isinstance(value, str):
        raise bad("expected the name of an interpolation")
    if field_name == "central_crop":
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value <= 1:
            raise bad("expected a fraction in (0, 1], as tf.image.central_crop takes")
        return float(value)
    if field_name in ("bgr", "antialias", "aspect_crop"):
        if not isinstance(value, bool):
            raise bad("expected true or false")
        return value
    if field_name == "default_crop":
        if not isinstance(value, int | float) or not 0 <= value <= 1:
            raise bad("expected a fraction between 0 and 1")
        return float(value)
    kinds = {f.name: f.type for f in fields(ModelConfig)}
    if kinds.get(field_name) in ("int", int):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise bad("expected a non-negative integer")
        if field_name in ("max_batch_size", "replicas", "top_k", "replicas_per_gpu") and value < 1:
            raise bad("expected at least 1")
    if field_name == "max_delay_ms" and (not isinstance(value, int | float) or value < 0):
        raise bad("expected a non-negative number of milliseconds")
    return value
