"""ONNX Runtime: the default and fastest runtime on CPU (DESIGN.md, 'Measured here')."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..types import ModelInfo, ModelSpec, TensorSpec

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


class OnnxRuntime:
    """One ONNX model in an InferenceSession with a fixed intra-op thread count."""

    def __init__(self, spec: ModelSpec | Path, threads: int = 0) -> None:
        import onnxruntime as ort

        path = spec.path if isinstance(spec, ModelSpec) else spec

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning threads wait for work by burning a core; the HTTP process needs that core
        # for decoding (a tiny model's worker sat at 70% CPU while idle-waiting).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name
        self._output = self._session.get_outputs()[0].name
        ops, parameters = _graph_summary(path)
        self.info = ModelInfo(
            inputs=tuple(_spec(t) for t in self._session.get_inputs()),
            outputs=tuple(_spec(t) for t in self._session.get_outputs()),
            ops=ops,
            parameters=parameters,
            producer=self._session.get_modelmeta().producer_name,
            scaling=_own_scaling(self._session.get_modelmeta().custom_metadata_map),
        )

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run([self._output], {self._input: batch})[0]


def _own_scaling(metadata: dict[str, str]):
    """``modelhost.scaling`` in the model's metadata (written by the converter when the source
    model scaled its own input), or None."""
    value = metadata.get("modelhost.scaling")
    return value if value in ("none", "unit", "tf", "caffe", "torch") else None


def _spec(node) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else -1 for d in node.shape)
    return TensorSpec(node.name, _DTYPES.get(node.type, node.type), shape)


def _graph_summary(path: Path) -> tuple[tuple[str, ...], int]:
    """Op types with counts in graph order (e.g. 'Conv×12') and the parameter count, for
    ``inspect``; empty when the ``onnx`` package is not installed."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        return (), 0
    graph = onnx.load(str(path), load_external_data=False).graph
    counts: dict[str, int] = {}
    for node in graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    params = sum(int(np.prod(numpy_helper.to_array(t).shape)) for t in graph.initializer)
    return tuple(f"{op}×{n}" for op, n in counts.items()), params
