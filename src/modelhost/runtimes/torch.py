"""PyTorch models: TorchScript (``torch.jit.save``, ``.pt``) and ``torch.export`` programs
(``torch.export.save``, ``.pt2``).

A TorchScript file does not record its input shape, so its input is taken as NCHW with three
channels and ``modelhost.toml`` ``[input] size`` (224×224 otherwise); an exported program
records the shape it was exported with.

Neither format is unpickled with Python's pickle: TorchScript's reader only builds torch types,
and an exported program's tensors are raw bytes. ``torch.export.load`` would still unpickle an
entry its archive marks as pickled (a tensor subclass, an opaque object) and falls back to a
full unpickler when a safe load fails, so without ``--trust-model-code`` such entries are
refused and every ``torch.load`` inside it is forced to ``weights_only``. A ``torch.save``
checkpoint (a pickle) is refused with the way to save a servable model.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np

from ..types import ModelInfo, ModelSpec, TensorSpec
from .base import ArrayRuntime, ModelFileError, UntrustedCode, first_line


def _torch(threads: int):
    import torch

    if threads:
        torch.set_num_threads(threads)
    return torch


class _TorchRuntime(ArrayRuntime):
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
        _check_torchscript(spec.path)
        try:
            self.module = torch.jit.load(str(spec.path), map_location="cpu").eval()
        except RuntimeError as exc:
            raise ModelFileError(f"{spec.path.name}: torch cannot load it as TorchScript: "
                                 f"{_first_line(exc)}") from None
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
        _check_exported(spec.path, spec.options.trust_code)
        try:
            with _weights_only(not spec.options.trust_code):
                self.program = torch.export.load(str(spec.path))
        except pickle.UnpicklingError:
            raise UntrustedCode(
                f"{spec.path.name} holds a pickled Python object that is not plain tensors, "
                "which can run code when loaded; load it only if you trust its author, with "
                "--trust-model-code") from None
        except (RuntimeError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            raise ModelFileError(f"{spec.path.name}: torch cannot load it as an exported "
                                 f"program: {_first_line(exc)}") from None
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


def _archive_names(path: Path, kind: str) -> list[str]:
    """The member names of a torch zip archive; a damaged or foreign file fails here, with
    one line, before torch reads it."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelFileError(f"{path.name}: not a {kind} archive (damaged, truncated or another "
                             f"kind of file: {_first_line(exc)})") from None


def _check_torchscript(path: Path) -> None:
    names = _archive_names(path, "TorchScript")
    if not any("/code/" in n for n in names):
        raise ModelFileError(
            f"{path.name}: holds no TorchScript program (a torch.save checkpoint?); modelhost "
            "never unpickles checkpoints: save the model with torch.jit.save or torch.export.save")


def _check_exported(path: Path, trust: bool) -> None:
    """Refuse an exported program whose weights or constants are pickled Python objects (they
    run code when loaded) unless trusted."""
    names = _archive_names(path, "torch.export")
    if trust:
        return
    with zipfile.ZipFile(path) as archive:
        for name in names:
            if not (name.endswith("_config.json") and "/data/" in name):
                continue
            try:
                entries = json.loads(archive.read(name)).get("config", {})
            except (ValueError, AttributeError, zipfile.BadZipFile) as exc:
                raise ModelFileError(f"{path.name}: {name} is damaged ({_first_line(exc)})") \
                    from None
            for fqn, entry in entries.items():
                kind = str(entry.get("path_name", ""))
                if entry.get("use_pickle") or not kind.startswith(("weight_", "tensor_")):
                    raise UntrustedCode(
                        f"{path.name} stores {fqn[:100]!r} as a pickled Python object, which can "
                        "run code when loaded; load it only if you trust its author, with "
                        "--trust-model-code")


@contextlib.contextmanager
def _weights_only(force: bool):
    """Make every ``torch.load`` inside ``torch.export.load`` use ``weights_only=True``, even
    where it asks for less (its fallback after a failed safe load)."""
    if not force:
        yield
        return
    before = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"]
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = before


def _first_line(exc: BaseException) -> str:
    return first_line(exc) or type(exc).__name__


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
