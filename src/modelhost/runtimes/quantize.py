"""INT8: quantise an ONNX model with ONNX Runtime's own tooling, measure it against the FP32
model, and serve it only where that measurement was made for these exact bytes.

INT8 changes the numbers, so it is opt-in and gated like a conversion: ``modelhost optimize
--int8`` writes ``model.int8.onnx`` only when its top-1 agrees with the FP32 model on at least
``min_agreement`` of the samples, and records what it measured in ``optimize.json`` beside the
model (the SHA-256 of the FP32 file it came from and of the INT8 file). ``[runtime] precision =
"int8"`` then serves the INT8 file only when that record matches both files.

Static quantisation (QDQ, per-channel weights, activations calibrated on the samples) when
samples are given; dynamic quantisation (weights only, activations quantised per batch at run
time) otherwise. The samples that calibrate are also the ones measured: give more than you
calibrate on to see the agreement on unseen images.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import StartupError
from ..types import ModelSpec, Preprocessing
from .providers import Agreement, agreement

RECORD = "optimize.json"
INT8_NAME = "model.int8.onnx"


class PrecisionError(StartupError):
    """``precision = "int8"`` cannot be honoured (no verified INT8 file), or ``optimize``
    refused to write one; the message says which and what to run."""


@dataclass(frozen=True)
class Speed:
    """Milliseconds per batch of ``batch`` inputs, FP32 and INT8, on the CPU provider."""

    batch: int
    fp32_ms: float
    int8_ms: float

    @property
    def speedup(self) -> float:
        return self.fp32_ms / self.int8_ms if self.int8_ms else 0.0


@dataclass(frozen=True)
class Report:
    """What ``optimize --int8`` measured; saved as optimize.json when it passed."""

    model: str
    fp32_file: str
    fp32_sha256: str
    int8_file: str
    int8_sha256: str
    method: str
    samples: int
    top1_agreement: float
    max_dp: float
    min_agreement: float
    speed: tuple[Speed, ...] = ()
    onnxruntime: str = ""
    passed: bool = False

    def as_json(self) -> str:
        body = asdict(self)
        body["speed"] = [{**asdict(s), "speedup": round(s.speedup, 3)} for s in self.speed]
        return json.dumps(body, indent=2)


def sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def optimize_int8(spec: ModelSpec, folder: Path, inputs: np.ndarray, calibrate: bool,
                  out: Path | None = None, min_agreement: float = 0.99,
                  threads: int = 0) -> Report:
    """Quantise ``spec`` (an ONNX model), measure it on ``inputs`` (prepared as requests are)
    and, when top-1 agreement ≥ ``min_agreement``, publish it as ``out`` (default
    ``folder/<stem>.int8.onnx``) with ``folder/optimize.json``. The report, passed or not."""
    import onnxruntime as ort

    out = out or folder / f"{spec.path.stem}.int8.onnx"
    with tempfile.TemporaryDirectory(prefix=".optimize-", dir=folder) as work:
        candidate = Path(work) / INT8_NAME
        method = _quantize(spec.path, candidate, inputs if calibrate else None)
        measured = measure(spec, candidate, inputs, threads)
        speed = tuple(_speed(spec.path, candidate, inputs, b, threads)
                      for b in sorted({1, max(1, spec.config.max_batch_size)}))
        report = Report(
            model=spec.name, fp32_file=str(spec.path), fp32_sha256=sha256(spec.path),
            int8_file=_relative(out, folder), int8_sha256=sha256(candidate), method=method,
            samples=len(inputs), top1_agreement=round(measured.top1_agreement, 6),
            max_dp=measured.max_dp, min_agreement=min_agreement, speed=speed,
            onnxruntime=ort.__version__, passed=measured.top1_agreement >= min_agreement,
        )
        if report.passed:
            os.replace(candidate, out)
            (folder / RECORD).write_text(report.as_json())
    return report


def _relative(path: Path, folder: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(folder.resolve())) if path.is_relative_to(folder.resolve()) \
        else str(path)


def _quantize(source: Path, target: Path, calibration: np.ndarray | None) -> str:
    """ONNX Runtime's quantisation: its pre-processing (shape inference, graph optimisation),
    then static QDQ with calibration, or dynamic. Returns how."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = target.with_name("prepared.onnx")
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    if calibration is None:
        # Dynamic quantisation suits MatMul/Gemm (transformers, dense heads); on convolutions
        # ONNX Runtime's ConvInteger was 8× slower than FP32 here and flipped 8 of 12 photos.
        quantize_dynamic(str(prepared), str(target), weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Gemm"])
        return "dynamic, MatMul/Gemm weights (no samples given to calibrate convolutions)"
    quantize_static(str(prepared), str(target), _Reader(source, calibration),
                    quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return f"static QDQ, per-channel, calibrated on {len(calibration)} samples"


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol: one sample per call, then None."""

    def __init__(self, model: Path, inputs: np.ndarray) -> None:
        import onnxruntime as ort

        name = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]) \
            .get_inputs()[0].name
        self._rows = iter([{name: row[None]} for row in inputs])

    def get_next(self) -> dict | None:
        return next(self._rows, None)


def measure(spec: ModelSpec, candidate: Path, inputs: np.ndarray, threads: int = 0) -> Agreement:
    """Top-1 agreement and max |Δp| of ``candidate`` against the FP32 model on ``inputs``."""
    from ..postprocess import probabilities
    from .onnx import OnnxRuntime

    fp32, int8 = OnnxRuntime(spec.path, threads), OnnxRuntime(candidate, threads)
    kind = spec.config.output_kind
    p = np.stack([probabilities(fp32.predict(row[None]).reshape(-1), kind) for row in inputs])
    q = np.stack([probabilities(int8.predict(row[None]).reshape(-1), kind) for row in inputs])
    return agreement(p, q)


def _speed(fp32: Path, int8: Path, inputs: np.ndarray, batch: int, threads: int,
           seconds: float = 1.5) -> Speed:
    """Median milliseconds per call at ``batch``, each model timed alternately for about
    ``seconds`` (alternating shares the machine's load fairly between the two)."""
    from .onnx import OnnxRuntime

    rows = np.resize(inputs, (batch, *inputs.shape[1:])).astype(inputs.dtype)
    runtimes = [OnnxRuntime(fp32, threads), OnnxRuntime(int8, threads)]
    for runtime in runtimes:
        runtime.predict(rows)
    times: list[list[float]] = [[], []]
    ends = time.perf_counter() + seconds
    while time.perf_counter() < ends or len(times[1]) < 3:
        for runtime, kept in zip(runtimes, times, strict=True):
            started = time.perf_counter()
            runtime.predict(rows)
            kept.append((time.perf_counter() - started) * 1000)
    return Speed(batch, round(float(np.median(times[0])), 3), round(float(np.median(times[1])), 3))


def int8_spec(spec: ModelSpec, folder: Path) -> ModelSpec:
    """``spec`` served from its verified INT8 file: ``folder/optimize.json`` must name this FP32
    file's SHA-256 and the INT8 file's, else PrecisionError says what to run (naming files, not
    server paths: V2 model control and ``/readyz`` show it to clients)."""
    record_path = folder / RECORD
    again = "run: modelhost optimize MODEL_FOLDER --int8"
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        raise PrecisionError(f"{spec.name}: precision = \"int8\" but {record_path.name} is "
                             f"missing or unreadable in the model's folder; {again}") from None
    int8 = folder / str(record.get("int8_file", INT8_NAME))
    if record.get("fp32_sha256") != sha256(spec.path) or not record.get("passed"):
        raise PrecisionError(f"{spec.name}: precision = \"int8\" but {record_path.name} was made "
                             f"for another version of the model (SHA-256 differs); {again}")
    if not int8.is_file() or sha256(int8) != record.get("int8_sha256"):
        raise PrecisionError(f"{spec.name}: precision = \"int8\" but {int8.name} is missing or "
                             f"not the file that was verified; {again}")
    note = (f"INT8 ({record['method']}): top-1 agreement {record['top1_agreement']:.3f} with "
            f"FP32 on {record['samples']} samples, max |Δp| {record['max_dp']:.2g}")
    runtime_note = "; ".join(filter(None, [spec.runtime_note, note]))
    return replace(spec, path=int8, runtime_note=runtime_note)


def sample_tensors(files: list[Path], prep: Preprocessing) -> np.ndarray:
    """Images prepared exactly as requests are (the model's own preprocessing)."""
    from ..inputs.images import to_tensor
    from ..types import Region

    return np.stack([to_tensor(p.read_bytes(), prep, Region(), 50_000_000) for p in files])
