"""The shipped demo models, run with onnxruntime on inputs built the way the server does.

The server's own preprocessing lives elsewhere; this file re-implements the documented
steps (crop, resize, scaling, layout) from each model's ``modelhost.toml`` so the tests
also catch a toml that no longer matches what the model was trained on.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

import modelhost
from modelhost.demo import DEMO_DIR, imagenet_available

RESAMPLE = {
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


# --------------------------------------------------------------------------- helpers


class Folder:
    """A model folder loaded for testing: config, labels and an onnxruntime session."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.config: dict[str, Any] = tomllib.loads((path / "modelhost.toml").read_text())
        self.labels = (path / "labels.txt").read_text(encoding="utf-8").splitlines()
        self.session = ort.InferenceSession(
            str(path / "model.onnx"), providers=["CPUExecutionProvider"]
        )

    def tensor(self, image: Image.Image, point: tuple[float, float] | None = None) -> np.ndarray:
        """One image as the server would feed it: [1, C, H, W] float32."""
        spec = self.config["input"]
        channels = self.session.get_inputs()[0].shape[1]
        image = image.convert("L" if channels == 1 else "RGB")
        if point is not None:
            image = crop_around(image, point, spec.get("crop", 1.0))
        image = resize(image, spec)
        x = scale(np.asarray(image, dtype=np.float32), spec.get("scaling", "none"))
        x = x[..., None] if x.ndim == 2 else x
        assert spec.get("layout", "NCHW") == "NCHW"
        return x.transpose(2, 0, 1)[None]

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """Softmax of the logits for a batch."""
        (logits,) = self.session.run(["logits"], {"image": x})
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def top1(self, image: Image.Image, point: tuple[float, float] | None = None) -> str:
        """Label of the most likely class for one image."""
        return self.labels[int(self.probabilities(self.tensor(image, point))[0].argmax())]


def crop_around(image: Image.Image, point: tuple[float, float], fraction: float) -> Image.Image:
    """Square of side fraction * min(W, H) centred on point, clipped to the image."""
    half = fraction * min(image.size) / 2
    x, y = point
    box = (max(0, x - half), max(0, y - half), min(image.width, x + half),
           min(image.height, y + half))  # fmt: skip
    return image.crop(tuple(round(v) for v in box))


def resize(image: Image.Image, spec: dict[str, Any]) -> Image.Image:
    """Shorter side to ``resize`` then centre crop, or stretch straight to ``size``."""
    width, height = spec["size"]
    method = RESAMPLE[spec.get("resample", "bilinear")]
    shorter = spec.get("resize", 0)
    if spec.get("pipeline") == "torchvision":  # torchvision itself, the reference
        from torchvision import transforms

        return transforms.Compose([transforms.Resize(shorter, method),
                                   transforms.CenterCrop((height, width))])(image)
    if shorter <= 0:
        return image.resize((width, height), method)
    ratio = shorter / min(image.size)
    image = image.resize((round(image.width * ratio), round(image.height * ratio)), method)
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


def scale(x: np.ndarray, preset: str) -> np.ndarray:
    """The scaling presets the demo models use."""
    presets = {"none": x, "unit": x / 255.0, "inception128": (x - 127.0) / 128.0}
    return presets[preset].astype(np.float32)


def solid(rgb: tuple[int, int, int], size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A one-colour RGB image."""
    return Image.new("RGB", size, rgb)


def stripes(colors: list[tuple[int, int, int]], width: int, vertical: bool) -> Image.Image:
    """A 320x240 image of repeating stripes ``width`` pixels wide."""
    axis = np.arange(320 if vertical else 240) // width % len(colors)
    row = np.array(colors, dtype=np.uint8)[axis]
    pixels = np.broadcast_to(row[None] if vertical else row[:, None], (240, 320, 3))
    return Image.fromarray(np.ascontiguousarray(pixels))


# --------------------------------------------------------------------------- shipped folders


@pytest.fixture(scope="module")
def digits() -> Folder:
    return Folder(DEMO_DIR / "digits")


@pytest.fixture(scope="module")
def colors() -> Folder:
    return Folder(DEMO_DIR / "colors")


@pytest.mark.parametrize("name", ["digits", "colors"])
def test_folder_is_servable(name: str) -> None:
    """Names, dynamic batch and label count line up with what the server expects."""
    folder = Folder(DEMO_DIR / name)
    (inp,), (out,) = folder.session.get_inputs(), folder.session.get_outputs()
    assert inp.name == "image"
    assert inp.type == "tensor(float)"
    assert isinstance(inp.shape[0], str)
    assert inp.shape[2:] == folder.config["input"]["size"][::-1]
    assert out.name == "logits"
    assert folder.config["output"]["kind"] == "logits"
    assert folder.config["batching"]["max_batch_size"] == 32
    assert folder.config["workers"]["threads"] == 1
    assert len(folder.labels) == len(set(folder.labels)) == out.shape[1]
    assert (DEMO_DIR / name / "model.onnx").stat().st_size < 500_000
    x = np.zeros([32, *inp.shape[1:]], dtype=np.float32)
    assert folder.probabilities(x).shape == (32, out.shape[1])


def test_digits_held_out_accuracy(digits: Folder) -> None:
    """Held-out digits drawn dark on white, rendered 4x and box-resized back by the server."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    _, images, _, targets = train_test_split(
        data.images, data.target, test_size=0.25, random_state=0, stratify=data.target
    )
    assert digits.labels == [str(d) for d in range(10)]
    batch = []
    for ink in images:
        pixels = np.rint(255 * (1 - ink / 16)).astype(np.uint8)
        png = Image.fromarray(pixels, "L").resize((32, 32), Image.Resampling.NEAREST)
        batch.append(digits.tensor(png))
    x = np.concatenate(batch)
    assert x.shape == (450, 1, 8, 8)
    assert np.abs(x[:, 0] - (1 - images / 16)).max() < 1 / 255  # box undoes nearest x4
    predicted = digits.probabilities(x).argmax(axis=1)
    assert (predicted == targets).mean() >= 0.95


def test_digits_blank_page_is_not_confident(digits: Folder) -> None:
    """A white page carries no digit; it should not be called with certainty."""
    x = digits.tensor(Image.new("L", (64, 64), 255))
    assert digits.probabilities(x).max() < 0.9


@pytest.mark.parametrize(
    ("rgb", "name"),
    [
        ((255, 0, 0), "red"),
        ((0, 0, 128), "navy"),
        ((255, 255, 255), "white"),
        ((0, 0, 0), "black"),
        ((0, 128, 0), "green"),
        ((255, 255, 0), "yellow"),
        ((0, 0, 255), "blue"),
        ((128, 128, 128), "grey"),
        ((255, 140, 0), "orange"),
        ((128, 0, 128), "purple"),
    ],
)
def test_colors_solid(colors: Folder, rgb: tuple[int, int, int], name: str) -> None:
    """A click anywhere on a plain colour names that colour."""
    assert colors.top1(solid(rgb), point=(200, 100)) == name


def test_colors_labels(colors: Folder) -> None:
    """18 colour names plus "multi-coloured", in model output order."""
    assert colors.labels == [
        "black", "grey", "silver", "white", "red", "maroon", "orange", "brown", "yellow",
        "olive", "green", "teal", "cyan", "blue", "navy", "purple", "pink", "beige",
        "multi-coloured",
    ]  # fmt: skip
    assert colors.config["input"]["crop"] == 0.1


def test_colors_shaded_surface_keeps_its_name(colors: Folder) -> None:
    """Brightness texture (fur, fabric) is still one colour, not "multi-coloured"."""
    rng = np.random.default_rng(0)
    shade = np.clip(1 + 0.2 * rng.standard_normal((240, 320, 1)), 0.5, 1.5)
    pixels = np.clip(np.array([139, 69, 19]) * shade, 0, 255).astype(np.uint8)
    assert colors.top1(Image.fromarray(pixels), point=(160, 120)) == "brown"


def test_colors_crop_is_clipped_at_the_corner(colors: Folder) -> None:
    """A point at the image edge crops what exists instead of padding with another colour."""
    assert colors.top1(solid((0, 0, 128)), point=(0, 0)) == "navy"


@pytest.mark.parametrize("vertical", [True, False])
def test_colors_stripes_are_multi_coloured(colors: Folder, vertical: bool) -> None:
    """Thin stripes of clearly different colours are "multi-coloured", not their average."""
    image = stripes([(255, 0, 0), (0, 160, 0), (0, 0, 255), (255, 255, 0)], 5, vertical)
    assert colors.top1(image, point=(160, 120)) == "multi-coloured"


def test_colors_point_picks_the_local_colour(colors: Folder) -> None:
    """Wide stripes: the 10% crop sees only the stripe under the point."""
    image = stripes([(255, 0, 0), (0, 0, 255)], 80, vertical=True)
    assert colors.top1(image, point=(40, 120)) == "red"
    assert colors.top1(image, point=(120, 120)) == "blue"


# --------------------------------------------------------------------------- imagenet


def test_imagenet_available_without_importing_torch() -> None:
    """The server asks this in-process; it must not pull torch in."""
    code = "import sys; from modelhost.demo import imagenet_available as f; " \
        "print(f(), 'torch' in sys.modules)"  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], env=child_env(), capture_output=True,
                         text=True, check=True)  # fmt: skip
    assert out.stdout.split() == ["True", "False"]
    assert imagenet_available()


def test_imagenet_failed_conversion_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash mid-conversion must not leave a half model where the server would look."""
    from modelhost.demo import imagenet

    def explode(folder: Path) -> float:
        (folder / "model.onnx").write_bytes(b"half")
        raise RuntimeError("boom")

    monkeypatch.setattr(imagenet, "build", explode)
    with pytest.raises(RuntimeError, match="boom"):
        imagenet.convert(tmp_path / "imagenet")
    assert list(tmp_path.iterdir()) == []


def child_env() -> dict[str, str]:
    """Environment for a child Python that can import this checkout of modelhost."""
    src = str(Path(modelhost.__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory: pytest.TempPathFactory) -> Folder:
    from modelhost.demo.imagenet import convert

    out = tmp_path_factory.mktemp("cache") / "imagenet"
    assert convert(out) == out
    return Folder(out)


@pytest.mark.slow
def test_imagenet_folder(imagenet: Folder) -> None:
    """The generated toml and labels are what the server and users expect."""
    spec = imagenet.config["input"]
    assert spec == {"pipeline": "torchvision", "size": [224, 224], "layout": "NCHW",
                    "scaling": "inception128", "resize": 256, "resample": "bicubic"}
    assert imagenet.config["output"]["kind"] == "logits"
    assert imagenet.config["batching"]["max_batch_size"] == 1
    assert imagenet.config["workers"] == {"replicas": 2, "threads": 1}
    assert len(imagenet.labels) == len(set(imagenet.labels)) == 1000
    assert imagenet.labels[:2] == ["tench", "goldfish"]
    assert imagenet.labels[967] == "espresso"


@pytest.mark.slow
def test_imagenet_coffee_is_espresso(imagenet: Folder) -> None:
    from skimage import data

    probs = imagenet.probabilities(imagenet.tensor(Image.fromarray(data.coffee())))[0]
    assert "espresso" in imagenet.labels[int(probs.argmax())]
    assert probs.max() > 0.9


@pytest.mark.slow
def test_imagenet_chelsea_is_a_cat(imagenet: Folder) -> None:
    from skimage import data

    label = imagenet.top1(Image.fromarray(data.chelsea()))
    assert label in {"tabby cat", "tiger cat", "Egyptian cat"}


@pytest.mark.slow
def test_imagenet_cli_converts_once(tmp_path: Path) -> None:
    """``python -m modelhost.demo.imagenet OUT`` is how the server runs the conversion."""
    out = tmp_path / "imagenet"
    command = [sys.executable, "-m", "modelhost.demo.imagenet", str(out)]
    first = subprocess.run(command, env=child_env(), capture_output=True, text=True, check=True)
    assert first.stdout.strip() == str(out)
    assert sorted(p.name for p in out.iterdir()) == ["labels.txt", "model.onnx", "modelhost.toml"]
    assert [p.name for p in tmp_path.iterdir()] == ["imagenet"]  # no temp folder left
    stamp = (out / "model.onnx").stat().st_mtime_ns
    subprocess.run(command, env=child_env(), capture_output=True, text=True, check=True)
    assert (out / "model.onnx").stat().st_mtime_ns == stamp  # second run reuses the cache


@pytest.mark.slow
def test_a_converted_imagenet_demo_is_served_without_torch(
    imagenet: Folder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An image build or an init container converted the demo (``modelhost prepare``); the
    server that serves it from that cache may have no torch at all."""
    from modelhost.supply import demo

    shutil.copytree(imagenet.path, tmp_path / "demo" / "imagenet")
    monkeypatch.setattr(demo, "imagenet_available", lambda: False)
    specs = {spec.name: spec for spec in demo.demo_specs(tmp_path)}
    assert set(specs) == {"imagenet", "digits", "colors"}
    assert specs["imagenet"].format == "onnx" and len(specs["imagenet"].labels) == 1000
    # not converted and no torch: the others are served
    assert {spec.name for spec in demo.demo_specs(tmp_path / "empty")} == {"digits", "colors"}


def test_a_failed_demo_conversion_becomes_the_models_load_error(tmp_path: Path) -> None:
    """The conversion runs in the models' start; if it fails, the imagenet model fails to load
    with the reason (the server stops in one line, or serves the others with --keep-going)."""
    from modelhost.supply import demo

    (tmp_path / "demo").write_text("a file where the cache's demo folder should be")
    (spec,) = [s for s in demo.demo_specs(tmp_path) if s.name == "imagenet"]
    assert spec.format == demo.UNCONVERTED and spec.labels == ()
    failed = demo.converted(spec, timeout=120)
    assert failed.problem.startswith("converting the imagenet demo failed (exit 1): ")
    assert "Error" in failed.problem  # the converter's last line says which
