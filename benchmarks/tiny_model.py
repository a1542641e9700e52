"""Build a tiny ONNX image classifier for benchmarks: modelhost's overhead without a real model.

The network (input [N,3,9,9] float32 -> Conv 3x3 -> Relu -> global average pool -> Gemm ->
10 logits) runs in microseconds, so a benchmark against it measures the server (HTTP, decode,
batching, IPC), not the model. Usage: ``python benchmarks/tiny_model.py OUT_DIR``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SIZE = 9
CHANNELS = 8
CLASSES = 10
LABELS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
OPSET = 17
IR_VERSION = 8  # old enough for any onnxruntime modelhost supports

MODELHOST_TOML = f"""\
# A tiny benchmark model: see benchmarks/tiny_model.py.
[input]
size = [{SIZE}, {SIZE}]
scaling = "unit"
resample = "bilinear"

[output]
kind = "logits"

[batching]
max_batch_size = 32

[workers]
replicas = 1
threads = 1
"""


def build_graph(seed: int = 0) -> onnx.ModelProto:
    """The model with fixed random weights (seeded, so rebuilding gives the same file)."""
    rng = np.random.default_rng(seed)
    weights = [
        numpy_helper.from_array(rng.normal(0, 0.3, (CHANNELS, 3, 3, 3)).astype("f4"), "conv_w"),
        numpy_helper.from_array(np.zeros(CHANNELS, "f4"), "conv_b"),
        numpy_helper.from_array(rng.normal(0, 0.5, (CLASSES, CHANNELS)).astype("f4"), "fc_w"),
        numpy_helper.from_array(np.linspace(-0.1, 0.1, CLASSES).astype("f4"), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
        initializer=weights,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="modelhost-bench"
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def build(out_dir: Path) -> Path:
    """Write model.onnx, labels.txt and modelhost.toml into ``out_dir``; returns the folder."""
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(build_graph(), str(out_dir / "model.onnx"))
    (out_dir / "labels.txt").write_text("\n".join(LABELS) + "\n", encoding="utf-8")
    (out_dir / "modelhost.toml").write_text(MODELHOST_TOML, encoding="utf-8")
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", type=Path, help="folder to write the model into")
    print(build(parser.parse_args().out_dir))


if __name__ == "__main__":
    main()
