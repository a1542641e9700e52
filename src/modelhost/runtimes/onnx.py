"""ONNX Runtime: the default and fastest runtime on CPU (DESIGN.md, 'Measured here').

A model file is parsed (without its external data) before ONNX Runtime sees it: a file that is not
ONNX fails with one clear line, and a tensor whose external data lies outside the model's folder
(``../x``, an absolute path, a symlink out) is refused before anything reads it. ONNX Runtime
1.24+ refuses those too; this check does not depend on its version and says why. The server
checks each file once (:func:`check_file`, in supply/specs.py) and its workers reuse the result,
so a worker never imports the ``onnx`` package.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from ..types import CheckedFile, ModelInfo, ModelSpec, ProviderSpec, TensorSpec
from .base import ArrayRuntime, ModelFileError, first_line
from .providers import (
    ProviderError,
    agreement,
    device_note,
    fallback_allowed,
    open_session,
    unavailable,
)

_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(uint8)": "uint8",
    "tensor(int8)": "int8",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
    "tensor(string)": "string",
}


class OnnxRuntime(ArrayRuntime):
    """One ONNX model in an InferenceSession with a fixed intra-op thread count, on the CPU
    provider or, when ``[runtime] providers`` asks, on another one that gave the CPU's answers
    (:mod:`.providers`)."""

    def __init__(self, spec: ModelSpec | Path, threads: int = 0) -> None:
        path = spec.path if isinstance(spec, ModelSpec) else spec
        checked = spec.checked if isinstance(spec, ModelSpec) else None
        if checked is None or not _unchanged(path, checked):
            checked = check_file(path)
        try:
            self._session = open_session(path, _options(threads), ProviderSpec("cpu"))
        except Exception as exc:  # ONNX Runtime raises its own, untyped, errors
            reason = first_line(exc, 1000).replace(str(path), path.name)
            raise ModelFileError(f"{path.name}: ONNX Runtime cannot load it: {reason}") from None
        self._input = self._session.get_inputs()[0].name
        self._output = self._session.get_outputs()[0].name
        metadata = self._session.get_modelmeta().custom_metadata_map
        self.info = ModelInfo(
            inputs=tuple(_spec(t) for t in self._session.get_inputs()),
            outputs=tuple(_spec(t) for t in self._session.get_outputs()),
            ops=checked.ops,
            parameters=_source_parameters(metadata) or checked.parameters,
            producer=self._session.get_modelmeta().producer_name,
            scaling=_own_scaling(metadata),
            provider="cpu",
        )
        if isinstance(spec, ModelSpec) and spec.config.providers:
            self._choose(spec, threads)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run([self._output], {self._input: batch})[0]

    def _choose(self, spec: ModelSpec, threads: int) -> None:
        """Serve on the first listed provider that starts and gives the CPU's answers; a failure
        moves on only when a ``cpu`` follows in the list (and is reported), else it stops."""
        chain, problems = spec.config.providers, list[str]()
        for index, provider in enumerate(chain):
            if provider.name == "cpu":
                note = "; ".join([*problems, "serving on cpu"]) if problems else "cpu, as listed"
                self.info = replace(self.info, provider="cpu", provider_note=note)
                return
            try:
                reason = unavailable(provider)
                if reason:
                    raise ProviderError(reason)
                session = open_session(spec.path, _options(threads), provider,
                                       spec.config.gpu_memory_mb)
                note = self._verified(session, spec, provider) + device_note(provider, spec.config)
            except ProviderError as exc:
                if not fallback_allowed(chain, index):
                    raise
                problems.append(str(exc))
                continue
            self._session = session
            self.info = replace(self.info, provider=provider.name, provider_note=note)
            return

    def _verified(self, session, spec: ModelSpec, provider: ProviderSpec) -> str:
        """Run the CPU provider and ``session`` on the sample images; raise ProviderError with
        the measured difference unless top-1 agrees and |Δp| ≤ the tolerance."""
        from ..inputs.drift import sample_inputs
        from ..postprocess import probabilities
        from ..preprocessing import resolve

        batch = sample_inputs(spec, resolve(spec.config, self.info))
        kind = spec.config.output_kind
        rows = [(self._session.run([self._output], {self._input: row[None]})[0],
                 session.run([self._output], {self._input: row[None]})[0]) for row in batch]
        cpu = np.stack([probabilities(a.reshape(-1), kind) for a, _ in rows])
        other = np.stack([probabilities(b.reshape(-1), kind) for _, b in rows])
        result = agreement(cpu, other)
        tolerance = spec.config.tolerance
        if result.top1_flips or result.max_dp > tolerance:
            raise ProviderError(f"{provider}: differs from the CPU provider on {result.summary()} "
                                f"(tolerance {tolerance:g}); refused")
        return f"{provider}, verified against the CPU provider on {result.summary()}"


def _options(threads: int):
    """Session options: ``threads`` intra-op threads that sleep when idle."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning threads wait for work by burning a core; the HTTP process needs that core
    # for decoding (a tiny model's worker sat at 70% CPU while idle-waiting).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def _source_parameters(metadata: dict[str, str]) -> int:
    """``modelhost.parameters``: the original model's count, written by the converter, so that
    ``inspect`` and the served model state one number (conversion folds and adds constants)."""
    value = metadata.get("modelhost.parameters", "")
    return int(value) if value.isdigit() else 0


def _own_scaling(metadata: dict[str, str]):
    """``modelhost.scaling`` in the model's metadata (written by the converter when the source
    model scaled its own input), or None."""
    value = metadata.get("modelhost.scaling")
    return value if value in ("none", "unit", "tf", "caffe", "torch") else None


def _spec(node) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else -1 for d in node.shape)
    return TensorSpec(node.name, _DTYPES.get(node.type, node.type), shape)


def check_file(path: Path) -> CheckedFile:
    """Refuse a file that is not ONNX or keeps external data outside its folder (ModelFileError);
    else what a worker needs from the parse. Without the ``onnx`` package nothing is checked
    here (ONNX Runtime still refuses such files) and ops and parameters are unknown."""
    stat = path.stat()
    ops, parameters = _graph_summary(_checked_graph(path))
    return CheckedFile(stat.st_size, stat.st_mtime_ns, ops, parameters)


def _unchanged(path: Path, checked: CheckedFile) -> bool:
    """Whether ``path`` still has the size and modification time it had when checked."""
    try:
        stat = path.stat()
    except OSError:
        return False
    return (stat.st_size, stat.st_mtime_ns) == (checked.size, checked.mtime_ns)


def _checked_graph(path: Path):
    """The parsed graph (None without the ``onnx`` package), after refusing a file that is not
    ONNX and external data outside the model's folder."""
    try:
        import onnx
        from google.protobuf.message import DecodeError
    except ImportError:
        return None
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError) as exc:
        raise ModelFileError(f"{path.name}: not an ONNX model (damaged, truncated or another "
                             f"kind of file: {type(exc).__name__})") from None
    if model.ir_version == 0 or not model.graph.node:
        raise ModelFileError(f"{path.name}: not an ONNX model (no graph)")
    _check_external_data(path, model.graph)
    return model.graph


def _check_external_data(path: Path, graph) -> None:
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    folder = path.parent.resolve()
    for tensor in _tensors(graph):
        if not uses_external_data(tensor):
            continue
        location = ExternalDataInfo(tensor).location
        target = (folder / location.replace("\0", "")).resolve()
        if "\0" in location or Path(location).is_absolute() or not target.is_relative_to(folder):
            raise ModelFileError(
                f"{path.name}: tensor {tensor.name[:100]!r} keeps its data at {location[:200]!r}, "
                "outside the model's folder; refused")
        if not target.is_file():
            raise ModelFileError(f"{path.name}: tensor {tensor.name[:100]!r} keeps its data in "
                                 f"{location[:200]!r}, which is not a file in the model's folder")


def _tensors(graph):
    """Every tensor that can hold external data: initializers, sparse ones, and constants in
    node attributes, subgraphs included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _tensors(subgraph)


def _graph_summary(graph) -> tuple[tuple[str, ...], int]:
    """Op types with counts in graph order (e.g. 'Conv×12') and the parameter count (from the
    tensors' shapes: external data is never read here), for ``inspect``; empty without the
    ``onnx`` package."""
    if graph is None:
        return (), 0
    counts: dict[str, int] = {}
    for node in graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    params = sum(int(np.prod(t.dims)) for t in graph.initializer)
    return tuple(f"{op}×{n}" for op, n in counts.items()), params
