"""A real ONNX model with injectable faults, chosen by the colour of a solid image.

Its normal answer is the dominant colour (like tests/support.py's rgb model). Four magic colours
turn it hostile, through ordinary ONNX ops run by ONNX Runtime in the worker:

    NAN_COLOUR    every score is NaN
    INF_COLOUR    every score is +inf
    HANG_COLOUR   a Loop of two billion iterations: the worker is busy far past any deadline
    ALLOC_COLOUR  ConstantOfShape of two billion floats: an 8 GB allocation

The colour is read as a key ``65536·r + 256·g + b`` of the channel means (exact for a solid
image with ``scaling = "none"``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

NAN_COLOUR = (1, 2, 3)
INF_COLOUR = (1, 2, 4)
HANG_COLOUR = (1, 2, 5)
ALLOC_COLOUR = (1, 2, 6)
HUGE = 2_000_000_000.0


def _key(colour: tuple[int, int, int]) -> float:
    r, g, b = colour
    return float(65536 * r + 256 * g + b)


def _const(name: str, value, dtype=TensorProto.FLOAT, dims=None):
    array = np.asarray(value)
    return helper.make_tensor(name, dtype, list(array.shape) if dims is None else dims,
                              array.flatten().tolist())


def build(folder: Path, size: int = 9) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["mean"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["mean", "w"], ["logits"]),
        helper.make_node("MatMul", ["mean", "k"], ["key"]),  # [n, 1]
    ]
    for name in ("nan", "inf", "hang", "alloc"):
        nodes += [
            helper.make_node("Sub", ["key", f"{name}_key"], [f"{name}_diff"]),
            helper.make_node("Abs", [f"{name}_diff"], [f"{name}_abs"]),
            helper.make_node("Less", [f"{name}_abs", "half"], [f"is_{name}"]),
        ]
    nodes += [
        helper.make_node("Where", ["is_nan", "nan", "logits"], ["out1"]),
        helper.make_node("Where", ["is_inf", "inf", "out1"], ["out2"]),
        # hang: a Loop whose trip count is HUGE for the magic colour, 1 otherwise
        helper.make_node("Where", ["is_hang", "huge", "one"], ["hang_n"]),
        helper.make_node("ReduceMax", ["hang_n"], ["hang_max"], keepdims=0),
        helper.make_node("Cast", ["hang_max"], ["trips"], to=TensorProto.INT64),
        helper.make_node("Loop", ["trips", "", "zero"], ["spun"], body=_spin_body()),
        helper.make_node("Mul", ["spun", "zero"], ["spun0"]),
        helper.make_node("Add", ["out2", "spun0"], ["out3"]),
        # allocate: ConstantOfShape(HUGE) for the magic colour, (1) otherwise
        helper.make_node("Where", ["is_alloc", "huge", "one"], ["alloc_n"]),
        helper.make_node("ReduceMax", ["alloc_n"], ["alloc_max"], keepdims=1),
        helper.make_node("Reshape", ["alloc_max", "shape1"], ["alloc_flat"]),
        helper.make_node("Cast", ["alloc_flat"], ["alloc_shape"], to=TensorProto.INT64),
        helper.make_node("ConstantOfShape", ["alloc_shape"], ["block"],
                         value=_const("v", [1.0], dims=[1])),
        helper.make_node("ReduceMin", ["block"], ["block_min"], keepdims=0),
        helper.make_node("Mul", ["block_min", "zero"], ["block0"]),
        helper.make_node("Add", ["out3", "block0"], ["logits_out"]),
    ]
    weight = np.eye(3, dtype=np.float32) * 0.1
    initial = [
        _const("w", weight),
        _const("k", [[65536.0], [256.0], [1.0]]),
        _const("half", 0.5, dims=[]),
        _const("nan", float("nan"), dims=[]),
        _const("inf", float("inf"), dims=[]),
        _const("huge", HUGE, dims=[]),
        _const("one", 1.0, dims=[]),
        _const("zero", 0.0, dims=[]),
        _const("shape1", [1], TensorProto.INT64),
        *(_const(f"{n}_key", _key(c), dims=[]) for n, c in (
            ("nan", NAN_COLOUR), ("inf", INF_COLOUR), ("hang", HANG_COLOUR),
            ("alloc", ALLOC_COLOUR))),
    ]
    graph = helper.make_graph(
        nodes, "faulty",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, size, size])],
        [helper.make_tensor_value_info("logits_out", TensorProto.FLOAT, ["n", 3])],
        initial,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, folder / "model.onnx")
    (folder / "labels.txt").write_text("red\ngreen\nblue\n")
    (folder / "modelhost.toml").write_text('[input]\nscaling = "none"\n')
    return folder / "model.onnx"


def _spin_body() -> onnx.GraphProto:
    """Loop body: ``v + 1`` per iteration, so the loop is real work ONNX Runtime must do."""
    return helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["v_in", "step"], ["v_out"])],
        "spin",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [])],
        [_const("step", 1.0, dims=[])],
    )
