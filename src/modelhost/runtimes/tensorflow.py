"""TensorFlow SavedModels and frozen graphs (``.pb``).

A SavedModel is loaded with ``tf.saved_model.load`` (Keras 3 cannot load one) and its
``serving_default`` signature is called; the loaded object is kept, since the signature's
variables die with it. A frozen graph is imported into a wrapped function and pruned to its input
placeholder and output op, found as the tutorials found them by printing every op: the only
placeholder, and the one op whose output nothing consumes (``--input-name`` and
``--output-name`` choose otherwise). ``modelhost inspect`` lists every op with type and shape.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

import numpy as np

from ..types import ModelInfo, ModelSpec, TensorSpec
from .base import ArrayRuntime

_SCALING_SCOPE = re.compile(r"^(rescaling|normalization)(_\d+)?$")
# Ops that are never a model's answer: bookkeeping and constants.
_NOT_OUTPUTS = {"NoOp", "Const", "Placeholder", "Assert", "VarHandleOp", "Identity_n"}


def configured(threads: int):
    """Import TensorFlow quietly with ``threads`` intra-op threads (0: its own choice)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:  # already initialised in this process (conversion, tests)
            pass
    return tf


class SavedModelRuntime(ArrayRuntime):
    """The ``serving_default`` signature of a SavedModel; the first output (by name)."""

    def __init__(self, spec: ModelSpec, threads: int = 0) -> None:
        tf = configured(threads)
        self.loaded = tf.saved_model.load(str(spec.path))  # keep: owns the variables
        self.function = serving_function(self.loaded)
        _, kwargs = self.function.structured_input_signature
        self._input, tensor = next(iter(sorted(kwargs.items())))
        outputs = self.function.structured_outputs
        self._output = sorted(outputs)[0]
        nodes = _nodes(self.function.graph)
        self.info = ModelInfo(
            inputs=(TensorSpec(self._input, tensor.dtype.name, _shape(tensor.shape)),),
            outputs=tuple(TensorSpec(n, t.dtype.name, _shape(t.shape))
                          for n, t in sorted(outputs.items())),
            ops=_op_counts(nodes),
            parameters=sum(int(np.prod(v.shape)) for v in self.function.variables),
            producer="tensorflow",
            scaling="none" if _rescales(nodes) else None,
        )

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self.function(**{self._input: batch})[self._output].numpy()


def serving_function(loaded):
    signatures = getattr(loaded, "signatures", {})
    if "serving_default" in signatures:
        return signatures["serving_default"]
    if len(signatures) == 1:
        return next(iter(signatures.values()))
    raise ValueError(f"the SavedModel has no serving_default signature (has {list(signatures)})")


class FrozenGraphRuntime(ArrayRuntime):
    """A frozen GraphDef pruned to one input placeholder and one output op."""

    def __init__(self, spec: ModelSpec, threads: int = 0) -> None:
        tf = configured(threads)
        self.path = spec.path
        graph_def = read_graph_def(spec.path)
        wrapped = tf.compat.v1.wrap_function(
            lambda: tf.compat.v1.import_graph_def(graph_def, name=""), []
        )
        graph = wrapped.graph
        self.input_name, self.output_name = endpoints(
            graph, spec.options.input_name, spec.options.output_name
        )
        source = graph.get_tensor_by_name(self.input_name)
        sink = graph.get_tensor_by_name(self.output_name)
        self._fn = wrapped.prune([source], [sink])
        self._tf = tf
        operations = graph.get_operations()
        nodes = _nodes(graph)  # a copy of the whole graph definition: made once
        self.info = ModelInfo(
            inputs=(TensorSpec(self.input_name, source.dtype.name, _shape(source.shape)),),
            outputs=(TensorSpec(self.output_name, sink.dtype.name, _shape(sink.shape)),),
            ops=_op_counts(nodes),
            parameters=sum(int(np.prod(op.outputs[0].shape)) for op in operations
                           if op.type == "Const" and op.outputs[0].shape.rank),
            producer="tensorflow (frozen graph)",
            scaling="none" if _rescales(nodes) else None,
            graph=tuple((op.name, op.type, _shapes(op)) for op in operations),
        )

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self._fn(self._tf.constant(batch))[0].numpy()


def read_graph_def(path: Path):
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(path.read_bytes())
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ValueError(f"{path.name} is not a frozen TensorFlow graph ({exc})") from None
    return graph_def


def endpoints(graph, input_name: str | None, output_name: str | None) -> tuple[str, str]:
    """Tensor names ('op:0') of the model's input and output."""
    operations = graph.get_operations()
    if input_name is None:
        placeholders = [op.name for op in operations if op.type == "Placeholder"]
        if len(placeholders) != 1:
            raise ValueError(f"the graph has {len(placeholders)} placeholders {placeholders[:10]};"
                             " choose the input with --input-name")
        input_name = placeholders[0]
    if output_name is None:
        consumed = {t.op.name for op in operations for t in op.inputs}
        sinks = [op for op in operations
                 if op.name not in consumed and op.type not in _NOT_OUTPUTS and op.outputs]
        softmax = [op for op in sinks if op.type == "Softmax"]
        chosen = sinks if len(sinks) == 1 else softmax
        if len(chosen) != 1:
            raise ValueError(f"cannot tell the output op among {[op.name for op in sinks][:10]};"
                             " choose it with --output-name")
        output_name = chosen[0].name
    return _tensor_name(graph, input_name), _tensor_name(graph, output_name)


def _tensor_name(graph, name: str) -> str:
    name = name if ":" in name else f"{name}:0"
    try:
        graph.get_tensor_by_name(name)
    except (KeyError, ValueError):
        raise ValueError(f"the graph has no tensor {name!r}") from None
    return name


def _nodes(graph) -> list[tuple[str, str]]:
    """(name, op type) of every node, including those inside the graph's functions (a
    SavedModel's layers live in its function library, behind one StatefulPartitionedCall)."""
    graph_def = graph.as_graph_def()
    nodes = [(n.name, n.op) for n in graph_def.node]
    for function in graph_def.library.function:
        nodes.extend((n.name, n.op) for n in function.node_def)
    return nodes


def _rescales(nodes: list[tuple[str, str]]) -> bool:
    """Whether a Keras Rescaling/Normalization layer survives in the graph's op names
    (a name segment like ``rescaling`` or ``normalization_1``; not ``batch_normalization``)."""
    return any(_SCALING_SCOPE.match(part) for name, _ in nodes
               for part in name.lower().split("/"))


def _op_counts(nodes: list[tuple[str, str]]) -> tuple[str, ...]:
    counts = Counter(op for _, op in nodes)
    return tuple(f"{name}×{n}" for name, n in counts.items())


def _shape(shape) -> tuple[int, ...]:
    if shape.rank is None:
        return ()
    return tuple(-1 if d is None else int(d) for d in shape.as_list())


def _shapes(op) -> str:
    return ", ".join(str(list(_shape(t.shape))) for t in op.outputs)
