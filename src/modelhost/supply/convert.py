"""Convert Keras, TensorFlow and PyTorch models to ONNX at load, verify, cache, or say why not.

``--runtime auto`` (the default) serves a convertible model with ONNX Runtime, which is faster on
CPU than each framework's own runtime (DESIGN.md, 'Measured here'), but only after the converted
model has been checked against the original on the same inputs: noise images and smooth
synthetic images, plus any images in a ``samples/`` folder beside the model (real inputs; put a
few there), all prepared exactly as the server prepares requests. The check passes when the
probabilities differ by at most :data:`MAX_ABS_DIFF` and every sample's top-1 class is the same
(a top-1 tie in the original, top two within ``runtimes.providers.TIE``, cannot be ordered and is
not counted).

A conversion runs once per source file: the result is cached under ``cache_dir/onnx/`` by the
SHA-256 of the source's bytes (and the options that shape it). It runs in a subprocess
(``python -m modelhost.supply.convert``) so that TensorFlow or torch never load in the server
process. When it fails, the native runtime serves and the reason is logged and shown on
``/api/models/{model}``; ``--runtime onnx`` makes the failure fatal instead, ``--runtime native``
skips the conversion.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import StartupError
from ..inputs.drift import sample_inputs
from ..runtimes.providers import agreement
from ..types import ModelSpec, Preprocessing

if TYPE_CHECKING:
    from ..registry import Progress

log = logging.getLogger("modelhost.convert")

CONVERTIBLE = ("keras", "tf_savedmodel", "tf_frozen", "torchscript", "torch_export")
MAX_ABS_DIFF = 1e-4
CONVERTER_VERSION = "2"  # bump when conversion changes, so that caches are redone
OPSET = 17


class ConversionError(StartupError):
    """``--runtime onnx`` was asked for and the model could not be converted and verified."""


# -- server side: decide, look in the cache, run the subprocess ---------------------------------


def prepare(spec: ModelSpec, cache_dir: Path, timeout: float,
            progress: Callable[[Progress], None] | None = None) -> ModelSpec:
    """The spec to serve: converted to ONNX when asked and verified, else the native one with
    the reason in ``runtime_note``. ``progress`` hears when a conversion starts (the server
    shows it on /readyz, and stops it if the server stops first)."""
    if spec.format not in CONVERTIBLE:
        return spec
    if spec.options.runtime == "native":
        return replace(spec, runtime_note=f"{spec.format} runtime (--runtime native)")
    target = cache_dir / "onnx" / cache_key(spec)
    report = _read_report(target)
    if report is None:
        log.info("%s: converting %s to ONNX (once; cached in %s)", spec.name, spec.format, target)
        report = _convert_in_subprocess(spec, target, timeout, progress)
    if report["ok"]:
        return replace(spec, path=target / "model.onnx", format="onnx", source_format=spec.format,
                       runtime_note=f"ONNX Runtime, converted from {spec.format}: "
                                    f"{report['detail']}")
    if spec.options.runtime == "onnx":
        raise ConversionError(f"{spec.name}: {spec.path.name} cannot be served with ONNX Runtime "
                              f"(--runtime onnx): {report['reason']}")
    if report.get("unloadable"):  # the worker fails the same way and reports it, once
        return spec
    log.warning("%s: serving with the %s runtime; conversion to ONNX failed: %s",
                spec.name, spec.format, report["reason"])
    return replace(spec, runtime_note=f"{spec.format} runtime; conversion to ONNX failed: "
                                      f"{report['reason']}")


def cache_key(spec: ModelSpec) -> str:
    """SHA-256 of the source's bytes (every file of a SavedModel folder) and what shapes the
    conversion: format, chosen tensors, converter version."""
    digest = hashlib.sha256()
    for part in (CONVERTER_VERSION, spec.format, spec.options.input_name or "",
                 spec.options.output_name or ""):
        digest.update(part.encode() + b"\0")
    files = sorted(p for p in spec.path.rglob("*") if p.is_file()) if spec.path.is_dir() \
        else [spec.path]
    for path in files:
        digest.update(str(path.relative_to(spec.path) if spec.path.is_dir() else "").encode())
        with path.open("rb") as handle:
            for block in iter(functools.partial(handle.read, 1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _read_report(target: Path) -> dict | None:
    """The cached outcome: a verified model, or a failure recorded by this modelhost version
    (a newer one may convert what this one cannot, so it tries again)."""
    report = _report_file(target)
    if report is not None and report.get("ok") and (target / "model.onnx").is_file():
        return report
    return _report_file(target, _failure_name())


def _failure_name() -> str:
    from .. import __version__

    return f"failed-{__version__}.json"


def _remember_failure(target: Path, report: dict) -> None:
    """Keep a failed conversion's report, so that the next start does not spend the same
    tens of seconds (or the whole timeout) failing again."""
    try:
        target.mkdir(parents=True, exist_ok=True)
        (target / _failure_name()).write_text(json.dumps(report))
    except OSError as exc:
        log.warning("could not record the failed conversion in %s: %s", target, exc)


def _convert_in_subprocess(spec: ModelSpec, target: Path, timeout: float,
                           progress: Callable[[Progress], None] | None = None) -> dict:
    """Run the conversion in a fresh interpreter; its report, or a failure report (also
    remembered). A converter stopped by a signal (the server stopping first) is no failure of
    the model: ConversionError, nothing remembered, the next start tries again."""
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "modelhost.supply.convert", str(work)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
        if progress is not None:
            from ..registry import Progress  # the server's side only; the converter never

            progress(Progress(f"converting {spec.format} to ONNX", timeout, process.kill))
        try:
            _, stderr = process.communicate(pickle.dumps(spec), timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            late = {"ok": False, "reason": f"conversion took longer than {timeout:g}s"}
            _remember_failure(target, late)
            return late
        report = _report_file(work)
        if report is None:
            tail = stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
            report = {"ok": False, "reason": f"the converter exited with {process.returncode}: "
                                             f"{tail[0][:300]}"}
            if process.returncode < 0:  # stopped (the server stopping), not failed
                raise ConversionError(f"{spec.name}: the conversion was stopped "
                                      f"(signal {-process.returncode})")
        if report["ok"]:
            _install(work, target)
        else:
            _remember_failure(target, report)
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _install(work: Path, target: Path) -> None:
    """Move a verified conversion into place. Pods sharing the cache (one volume) may convert
    the same model at once: the first to arrive wins, the others keep its result — never
    delete it, since its process may be loading it that moment. Only a failure record (or
    nothing) is replaced."""
    installed = _report_file(target)
    if installed is not None and installed.get("ok") and (target / "model.onnx").is_file():
        return
    shutil.rmtree(target, ignore_errors=True)
    try:
        work.rename(target)
    except OSError:
        report = _read_report(target)
        if report is None or not report.get("ok"):
            raise


def _report_file(folder: Path, name: str = "report.json") -> dict | None:
    try:
        return json.loads((folder / name).read_text())
    except (OSError, ValueError):
        return None


# -- converter side (the subprocess) -------------------------------------------------------------


def convert(spec: ModelSpec, out: Path) -> dict:
    """Convert ``spec`` into ``out/model.onnx`` and verify it; the report (also written)."""
    from ..preprocessing import resolve
    from ..runtimes.base import ModelFileError, UntrustedCode, first_line, load_runtime
    from ..runtimes.onnx import OnnxRuntime

    started = time.perf_counter()
    try:
        source = load_runtime(replace(spec, options=replace(spec.options, runtime="native")), 0)
        prep = resolve(spec.config, source.info)
        onnx_path = out / "model.onnx"
        _EXPORTERS[spec.format](source, prep, onnx_path)
        _set_metadata(onnx_path, {"modelhost.source_format": spec.format,
                                  "modelhost.parameters": str(source.info.parameters),
                                  **({"modelhost.scaling": source.info.scaling}
                                     if source.info.scaling else {})})
        converted = OnnxRuntime(onnx_path, threads=0)
        detail = verify_batches(source, converted, spec, prep)
        report = {"ok": True, "detail": f"{detail}, {time.perf_counter() - started:.1f}s"}
    except Exception as exc:
        text = first_line(exc)
        report = {"ok": False, "reason": f"{type(exc).__name__}: {text}" if text
                  else type(exc).__name__,
                  "unloadable": isinstance(exc, ModelFileError | UntrustedCode)}
    (out / "report.json").write_text(json.dumps(report))
    return report


def verify_batches(source, converted, spec: ModelSpec, prep: Preprocessing) -> str:
    """Verify at batch 1, 2 and the configured maximum: a batch size baked into the graph
    (a traced ``Reshape [2, -1]``) fails here, not on the first request of another size."""
    largest = spec.config.max_batch_size
    batch = sample_inputs(spec, prep, count=max(8, largest))
    for size in sorted({1, 2, largest} - {len(batch)}):
        verify(source, converted, batch[:size], spec.config.output_kind)
    return (verify(source, converted, batch, spec.config.output_kind)
            + f", at batch sizes 1, 2 and {largest}")


def verify(source, converted, batch: np.ndarray, output_kind: str) -> str:
    """Compare both runtimes on ``batch``; raise with the numbers when they disagree."""
    from ..postprocess import probabilities

    expected = np.asarray(source.predict(batch)).reshape(len(batch), -1)
    actual = np.asarray(converted.predict(batch)).reshape(len(batch), -1)
    if expected.shape != actual.shape:
        raise ValueError(f"outputs differ in shape: {expected.shape} vs {actual.shape}")
    p = np.stack([probabilities(row, output_kind) for row in expected])
    q = np.stack([probabilities(row, output_kind) for row in actual])
    found = agreement(p, q)
    if found.max_dp > MAX_ABS_DIFF or found.top1_flips:
        raise ValueError(f"the ONNX model disagrees with the original: max |Δp| "
                         f"{found.max_dp:.2g}, top-1 differs on {found.top1_flips} of "
                         f"{len(batch)} inputs")
    return f"verified on {len(batch)} inputs, max |Δp| {found.max_dp:.1g}, same top-1"


def _export_keras(source, prep: Preprocessing, path: Path) -> None:
    from ..preprocessing import tensor_shape

    model = source.model
    model(np.zeros(tensor_shape(prep, 1), dtype=prep.dtype))  # export needs a called model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.export(str(path), format="onnx", verbose=False, opset_version=OPSET)


def _export_savedmodel(source, prep: Preprocessing, path: Path) -> None:
    import tensorflow as tf
    import tf2onnx

    spec = source.info.inputs[0]
    signature = [tf.TensorSpec([None if d < 0 else d for d in spec.shape], spec.dtype,
                               name=spec.name)]
    function = source.function
    output = source.info.outputs[0].name

    @tf.function(input_signature=signature)
    def call(x):
        return {output: function(**{spec.name: x})[output]}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tf2onnx.convert.from_function(call, input_signature=signature, opset=OPSET,
                                      output_path=str(path))


def _export_frozen(source, prep: Preprocessing, path: Path) -> None:
    import tf2onnx

    from ..runtimes.tensorflow import read_graph_def

    graph_def = read_graph_def(source.path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tf2onnx.convert.from_graph_def(graph_def, input_names=[source.input_name],
                                       output_names=[source.output_name], opset=OPSET,
                                       output_path=str(path))


def _export_torch(source, prep: Preprocessing, path: Path) -> None:
    """TorchScript: traced at batch 2 with the batch axis marked dynamic."""
    import torch

    from ..preprocessing import tensor_shape

    dummy = torch.zeros(tensor_shape(prep, 2), dtype=getattr(torch, prep.dtype))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(source.module, (dummy,), str(path), dynamo=False,
                          opset_version=OPSET, input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})


def _export_program(source, prep: Preprocessing, path: Path) -> None:
    """torch.export: the exported program itself, with its own dynamic dimensions (a trace
    of it would bake the example's batch into shapes such as ``Reshape [2, -1]``)."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_program = torch.onnx.export(source.program, dynamo=True, opset_version=OPSET,
                                         verbose=False)
        assert onnx_program is not None  # dynamo=True always returns the program
        onnx_program.save(str(path))


_EXPORTERS = {
    "keras": _export_keras,
    "tf_savedmodel": _export_savedmodel,
    "tf_frozen": _export_frozen,
    "torchscript": _export_torch,
    "torch_export": _export_program,
}


def _set_metadata(path: Path, values: dict[str, str]) -> None:
    """Record where the model came from and its own input scaling (read by runtimes/onnx.py)."""
    import onnx

    model = onnx.load(str(path))
    for key, value in values.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))


def main(argv: list[str]) -> int:
    spec = pickle.loads(sys.stdin.buffer.read())  # from our own server process, never a client
    return 0 if convert(spec, Path(argv[0]))["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
