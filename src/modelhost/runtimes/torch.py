"""PyTorch models: TorchScript (``torch.jit.save``, ``.pt``) and ``torch.export`` programs
(``torch.export.save``, ``.pt2``).

A TorchScript file does not record its input shape, so its input is taken as NCHW with three
channels and ``modelhost.toml`` ``[input] size`` (224×224 otherwise); an exported program
records the shape it was exported with.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from ..types import ModelInfo, ModelSpec, TensorSpec


def _torch(threads: int):
    import torch

    if threads:
        torch.set_num_threads(threads)
    return torch


class _TorchRuntime:
    """Shared by both formats: an eval-mode module called without autograd."""

    module = None

    def predict(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            output = self.module(torch.from_numpy(np.ascontiguousarray(batch)))
        if isinstance(output, list | tuple):
            output = output[0]
        return output.numpy()


class TorchScriptRuntime(_TorchRuntime):
    def __init__(self, spec: ModelSpec, threads: int = 0) -> None:
        torch = _torch(threads)
        self.module = torch.jit.load(str(spec.path), map_location="cpu").eval()
        width, height = spec.config.size or (-1, -1)
        kinds = Counter(m.original_name for m in self.module.modules())
        self.info = ModelInfo(
            inputs=(TensorSpec("input", "float32", (-1, _channels(self.module), height, width)),),
            outputs=(TensorSpec("output", "float32", (-1, -1)),),
            ops=tuple(f"{name}×{n}" for name, n in kinds.items()),
            parameters=sum(p.numel() for p in self.module.parameters()),
            producer="torchscript",
        )


class TorchExportRuntime(_TorchRuntime):
    def __init__(self, spec: ModelSpec, threads: int = 0) -> None:
        torch = _torch(threads)
        self.program = torch.export.load(str(spec.path))
        self.module = self.program.module()
        placeholders = [n for n in self.program.graph.nodes
                        if n.op == "placeholder" and n.name in _user_inputs(self.program)]
        outputs = [n for n in self.program.graph.nodes if n.op == "output"]
        example = placeholders[0].meta["val"]
        result = outputs[0].args[0][0].meta.get("val")
        self.info = ModelInfo(
            inputs=(TensorSpec(placeholders[0].name, _dtype(example), (-1, *example.shape[1:])),),
            outputs=(TensorSpec("output", _dtype(result) if result is not None else "float32",
                                (-1, *result.shape[1:]) if result is not None else (-1, -1)),),
            ops=tuple(f"{name}×{n}" for name, n in Counter(
                str(node.target).split(".")[-2] if "." in str(node.target) else str(node.target)
                for node in self.program.graph.nodes if node.op == "call_function").items()),
            parameters=sum(int(p.numel()) for p in self.program.state_dict.values()),
            producer="torch.export",
        )


def _user_inputs(program) -> set[str]:
    return set(program.graph_signature.user_inputs)


def _dtype(value) -> str:
    return str(value.dtype).removeprefix("torch.")


def _channels(module) -> int:
    """The input channel count of the first convolution (3 when there is none)."""
    for sub in module.modules():
        if sub.original_name in ("Conv2d", "Conv2D"):
            return int(sub.weight.shape[1])
    return 3
