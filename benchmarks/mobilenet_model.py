"""Build a MobileNetV2-architecture ONNX classifier for benchmarks: a real model's cost.

torchvision's ``mobilenet_v2`` (3.5 M parameters, 300 MFLOPs at 224x224) with seeded random
weights — no weights are downloaded; the speed of a network depends on its architecture, not on
what it learned — exported to ONNX once per machine and cached under ``$XDG_CACHE_HOME``. The
folder's modelhost.toml names only what the model needs (224x224, ImageNet mean/std, Pillow's
bilinear stretch) and no ``[workers]`` or ``[batching]``: a user's own model, served with the
defaults. Built by run.py and profile.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

SIZE = 224
CLASSES = 1000
MODELHOST_TOML = f"""\
# A MobileNetV2-architecture benchmark model: see benchmarks/mobilenet_model.py.
[input]
size = [{SIZE}, {SIZE}]
scaling = "torch"
resample = "bilinear"

[output]
kind = "logits"
"""

_EXPORT = f"""
import sys, torch, torchvision
CLASSES, SIZE = {CLASSES}, {SIZE}
torch.manual_seed(0)
model = torchvision.models.mobilenet_v2(weights=None, num_classes=CLASSES).eval()
torch.onnx.export(model, torch.zeros(1, 3, SIZE, SIZE), sys.argv[1], input_names=["input"],
                  output_names=["logits"],
                  dynamic_axes={{"input": {{0: "N"}}, "logits": {{0: "N"}}}},
                  opset_version=17, dynamo=False)
"""


def _cached_onnx() -> Path:
    """The exported file, built in a subprocess (torch never loads into the caller) once."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    out = cache / "modelhost-bench" / "mobilenet_v2-seed0-opset17.onnx"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_suffix(".partial")
        print(f"exporting MobileNetV2 to {out} (once) ...", flush=True)
        subprocess.run([sys.executable, "-c", _EXPORT, str(partial)], check=True)
        partial.replace(out)
    return out


def build(out_dir: Path) -> Path:
    """Write model.onnx, labels.txt and modelhost.toml into ``out_dir``; returns the folder."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_cached_onnx(), out_dir / "model.onnx")
    labels = "\n".join(f"class_{i:04d}" for i in range(CLASSES)) + "\n"
    (out_dir / "labels.txt").write_text(labels, encoding="utf-8")
    (out_dir / "modelhost.toml").write_text(MODELHOST_TOML, encoding="utf-8")
    return out_dir

