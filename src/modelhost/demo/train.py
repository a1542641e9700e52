"""Train the two tiny demo models (digits, colors) and write them as servable folders.

Run at development time; the resulting ``model.onnx``, ``labels.txt`` and
``modelhost.toml`` are committed, so users need neither torch nor this script::

    python -m modelhost.demo.train            # both models, into src/modelhost/demo/
    python -m modelhost.demo.train colors --out /tmp/demo

Both models are trained on tensors built exactly as the server builds them (see the
``[input]`` table of each toml), because a mismatch in preprocessing is the classic way a
served model quietly loses its accuracy. Everything is seeded and single-threaded so a
re-run reproduces the same weights.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

DEMO_DIR = Path(__file__).parent
SEED = 0

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class Trained:
    """A trained model plus what is needed to export and describe it."""

    name: str
    model: nn.Module
    labels: list[str]
    input_shape: tuple[int, int, int]  # C, H, W of one image
    toml: str
    test_accuracy: float


# --------------------------------------------------------------------------- shared


def seed_everything(seed: int = SEED) -> None:
    """Make training bit-reproducible on CPU (one thread: float sums keep their order)."""
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    augment: Augment | None = None,
) -> nn.Module:
    """AdamW, one-cycle schedule, label-smoothed cross-entropy: tiny models need no more."""
    gen = torch.Generator().manual_seed(SEED)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            xb = augment(x[idx], gen) if augment else x[idx]
            opt.zero_grad()
            loss_fn(model(xb), y[idx]).backward()
            opt.step()
            sched.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of an eval-mode model."""
    return float((model(x).argmax(1) == y).float().mean())


def export_onnx(model: nn.Module, shape: tuple[int, int, int]) -> bytes:
    """ONNX bytes: input "image" [batch, C, H, W] float32, output "logits" [batch, K].

    The TorchScript exporter is used on purpose (small, deterministic graphs); its
    deprecation warning is expected and silenced only here.
    """
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (torch.zeros(1, *shape),),
            buf,  # type: ignore[arg-type]  # its hint leaves out the file objects it accepts
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        )
    return buf.getvalue()


def check_onnx(onnx_bytes: bytes, model: nn.Module, x: torch.Tensor) -> float:
    """Max |logit diff| between onnxruntime and torch; raise if the export drifted."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    (got,) = session.run(["logits"], {"image": x.numpy()})
    with torch.no_grad():
        diff = float(np.abs(got - model(x).numpy()).max())
    if diff > 1e-4:
        raise RuntimeError(f"ONNX export disagrees with torch: {diff:.3g}")
    return diff


def write_folder(trained: Trained, out: Path, sample: torch.Tensor) -> Path:
    """Export, verify and write ``out/<name>/{model.onnx,labels.txt,modelhost.toml}``."""
    folder = out / trained.name
    folder.mkdir(parents=True, exist_ok=True)
    onnx_bytes = export_onnx(trained.model, trained.input_shape)
    check_onnx(onnx_bytes, trained.model, sample)
    (folder / "model.onnx").write_bytes(onnx_bytes)
    (folder / "labels.txt").write_text("\n".join(trained.labels) + "\n", encoding="utf-8")
    (folder / "modelhost.toml").write_text(trained.toml, encoding="utf-8")
    return folder


# --------------------------------------------------------------------------- digits

DIGITS_TOML = """\
# Handwritten digit (0-9) classifier: dark ink on a light background, 8x8 greyscale.
# Trained by modelhost.demo.train on scikit-learn's digits; do not edit by hand.
[input]
size = [8, 8]
layout = "NCHW"
scaling = "unit"
resize = 0
resample = "box"

[output]
kind = "logits"
top_k = 3

[batching]
max_batch_size = 32

[workers]
# every layout value is set, so the demo serves at once: nothing is measured at its first
# start (docs/models.md, "Tuning")
replicas = 1
threads = 1
"""


def digits_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn digits as the server sees them: ink dark (0), paper white (1).

    The dataset stores ink counts 0..16 (16 = full ink); a person writes dark on light, so
    the served pixel is 255 * (1 - v/16) and, after "unit" scaling, 1 - v/16.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (1.0 - digits.images / 16.0).astype(np.float32)[:, None]  # N, 1, 8, 8
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, digits.target, test_size=0.25, random_state=0, stratify=digits.target
    )
    return (torch.from_numpy(x_tr), torch.from_numpy(y_tr), torch.from_numpy(x_te),
            torch.from_numpy(y_te))  # fmt: skip


class DigitsNet(nn.Module):
    """Two 3x3 convs + pooling + a small head: ~22k parameters, ~90 KB of ONNX."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
        )  # fmt: skip
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.2), nn.Linear(32 * 4 * 4, 32), nn.ReLU(),
            nn.Linear(32, 10),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ink (dark) to positive activations first so zero padding means paper."""
        return self.head(self.features(1.0 - x))


def shift_and_fade(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random +-1 px shifts (white fill) and contrast changes.

    People do not centre digits as carefully as the dataset did, and pens/scanners vary
    in darkness; both are cheap to simulate and make the demo feel less brittle.
    """
    n = len(x)
    padded = nn.functional.pad(x, (1, 1, 1, 1), value=1.0)
    dx, dy = torch.randint(0, 3, (2, n), generator=gen)
    rows = (torch.arange(8)[None, :] + dy[:, None])[:, None, :, None].expand(n, 1, 8, 10)
    shifted = padded.gather(2, rows)
    cols = (torch.arange(8)[None, :] + dx[:, None])[:, None, None, :].expand(n, 1, 8, 8)
    shifted = shifted.gather(3, cols)
    ink = 0.7 + 0.3 * torch.rand(n, 1, 1, 1, generator=gen)
    return 1.0 - (1.0 - shifted) * ink


def train_digits() -> tuple[Trained, torch.Tensor]:
    """Train the digits CNN; return it with a sample batch for the ONNX check."""
    seed_everything()
    x_tr, y_tr, x_te, y_te = digits_data()
    model = fit(DigitsNet(), x_tr, y_tr, epochs=60, lr=3e-3, batch_size=64,
                augment=shift_and_fade)  # fmt: skip
    labels = [str(d) for d in range(10)]
    acc = accuracy(model, x_te, y_te)
    return Trained("digits", model, labels, (1, 8, 8), DIGITS_TOML, acc), x_te[:16]


# --------------------------------------------------------------------------- colors

COLORS_TOML = """\
# Colour namer: the pixels around a point (x, y) -> 18 colour names or "multi-coloured".
# The client sends x, y; the server crops a square of 10% of the shorter side there.
# Trained by modelhost.demo.train on generated patches; do not edit by hand.
[input]
size = [8, 8]
layout = "NCHW"
scaling = "unit"
resize = 0
resample = "box"
crop = 0.1

[output]
kind = "logits"
top_k = 3

[batching]
max_batch_size = 32

[workers]
# every layout value is set, so the demo serves at once: nothing is measured at its first
# start (docs/models.md, "Tuning")
replicas = 1
threads = 1
"""

MULTI = "multi-coloured"

# Several sRGB anchors per name: one point per name cannot describe e.g. both lime and
# dark green. A colour is named after its nearest anchor in CIE Lab (perceptual distance).
PROTOTYPES: dict[str, list[tuple[int, int, int]]] = {
    "black": [(0, 0, 0), (28, 28, 30)],
    "grey": [(128, 128, 128), (90, 90, 92), (110, 105, 100)],
    "silver": [(192, 192, 192), (168, 170, 174)],
    "white": [(255, 255, 255), (238, 240, 242)],
    "red": [(255, 0, 0), (210, 25, 35), (230, 60, 50)],
    "maroon": [(128, 0, 0), (100, 20, 35), (140, 30, 40)],
    "orange": [(255, 140, 0), (255, 100, 20), (240, 160, 60)],
    "brown": [(139, 69, 19), (100, 65, 35), (165, 110, 70), (75, 50, 30)],
    "yellow": [(255, 255, 0), (255, 220, 40), (250, 240, 120)],
    "olive": [(128, 128, 0), (100, 110, 40), (150, 140, 60)],
    "green": [(0, 128, 0), (0, 255, 0), (50, 180, 60), (20, 90, 30), (130, 210, 100)],
    "teal": [(0, 128, 128), (30, 110, 110)],
    "cyan": [(0, 255, 255), (64, 224, 208), (150, 240, 240)],
    "blue": [
        (0, 0, 255),
        (30, 100, 230),
        (100, 149, 237),
        (135, 190, 235),
        (60, 80, 200),
        (173, 216, 230),
    ],
    "navy": [(0, 0, 128), (25, 25, 112), (20, 40, 90)],
    "purple": [
        (128, 0, 128),
        (148, 0, 211),
        (110, 60, 170),
        (90, 30, 100),
        (180, 130, 220),
        (75, 0, 130),
    ],
    "pink": [(255, 192, 203), (255, 105, 180), (255, 0, 255), (230, 60, 140), (240, 150, 170)],
    "beige": [(245, 240, 215), (225, 205, 165), (210, 180, 140)],
}
COLOR_LABELS = [*PROTOTYPES, MULTI]


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB (0..255, any leading shape, last axis 3) to CIE L*a*b* under D65."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124564, 0.3575761, 0.1804375],
                  [0.2126729, 0.7151522, 0.0721750],
                  [0.0193339, 0.1191920, 0.9503041]])  # fmt: skip
    xyz = linear @ m.T / np.array([0.95047, 1.0, 1.08883])
    delta = 6 / 29
    f = np.where(xyz > delta**3, np.cbrt(xyz), xyz / (3 * delta**2) + 4 / 29)
    return np.stack(
        [116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])],
        axis=-1,
    )


_ANCHOR_LAB = srgb_to_lab(np.array([c for cs in PROTOTYPES.values() for c in cs]))
_ANCHOR_LABEL = np.array([i for i, cs in enumerate(PROTOTYPES.values()) for _ in cs])


def name_colors(rgb: np.ndarray) -> np.ndarray:
    """Index into COLOR_LABELS of the nearest anchor (Lab distance) for each colour."""
    lab = srgb_to_lab(rgb)
    dist = np.linalg.norm(lab[..., None, :] - _ANCHOR_LAB, axis=-1)
    return _ANCHOR_LABEL[dist.argmin(-1)]


def sample_colors(rng: np.random.Generator, n: int) -> np.ndarray:
    """Base colours (n, 3) in 0..255: a mix that covers the cube and its crowded corners.

    Uniform RGB alone under-samples greys, whites and near-anchor tones, which is where
    photos actually spend their pixels and where names change fastest.
    """
    kind = rng.integers(0, 3, n)
    uniform = rng.uniform(0, 255, (n, 3))
    anchors = np.array([c for cs in PROTOTYPES.values() for c in cs], dtype=np.float64)
    near = anchors[rng.integers(0, len(anchors), n)] + rng.normal(0, 20, (n, 3))
    grey = rng.uniform(0, 255, (n, 1)) + rng.normal(0, 10, (n, 3))
    out = np.where(kind[:, None] == 0, uniform, np.where(kind[:, None] == 1, near, grey))
    return np.clip(out, 0, 255)


def add_variation(patch: np.ndarray, rng: np.random.Generator, shade: float) -> np.ndarray:
    """Lighting gradient, shading texture and sensor noise on (n, 8, 8, 3) float patches.

    Real surfaces (fur, fabric, coffee crema) vary a lot in brightness but little in hue;
    ``shade`` is the largest relative brightness texture, so such patches are still named
    by their colour rather than called multi-coloured.
    """
    n = len(patch)
    ramp = np.linspace(-0.5, 0.5, 8)
    angle = rng.uniform(0, 2 * np.pi, (n, 1, 1))
    direction = np.cos(angle) * ramp[None, None, :] + np.sin(angle) * ramp[None, :, None]
    light = 1 + rng.uniform(-0.15, 0.15, (n, 1, 1)) * direction
    coarse = rng.normal(0, 1, (n, 4, 4)).repeat(2, 1).repeat(2, 2)
    field = (coarse + rng.normal(0, 1, (n, 8, 8))) / np.sqrt(2)
    shading = np.clip(1 + field * rng.uniform(0, shade, (n, 1, 1)), 0.3, 1.7)
    grain = rng.normal(0, 1, (n, 8, 8, 1)) * rng.uniform(0, 6, (n, 1, 1, 1))
    noise = rng.normal(0, 1, patch.shape) * rng.uniform(0, 5, (n, 1, 1, 1))
    return patch * (light * shading)[..., None] + grain + noise


def solid_patches(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 8, 8, 3) patches of one colour each, before variation."""
    return np.broadcast_to(sample_colors(rng, n)[:, None, None, :], (n, 8, 8, 3)).copy()


def distinct_colors(rng: np.random.Generator, k: int) -> np.ndarray:
    """k colours with different names, clearly apart (a person would say "multi").

    Lightness counts half: light and dark of one hue reads as shading, not as two colours,
    so black/grey is not multi-coloured but black/white or red/green is.
    """
    while True:
        colors = sample_colors(rng, k)
        lab = srgb_to_lab(colors) * np.array([0.5, 1.0, 1.0])
        gaps = np.linalg.norm(lab[:, None] - lab[None], axis=-1)[np.triu_indices(k, 1)]
        if len(set(name_colors(colors))) == k and gaps.min() > 40:
            return colors


def multi_pattern(rng: np.random.Generator) -> np.ndarray:
    """A (32, 32) map of colour indices: stripes, diagonals, blocks or a split.

    Drawn at 4x resolution with arbitrary offsets and box-averaged down to 8x8 by the
    caller, exactly what the server's box resize does to edges that fall mid-pixel.
    """
    i, j = np.mgrid[0:32, 0:32]
    k = int(rng.integers(2, 5))
    width = rng.uniform(4, 16)
    phase = rng.uniform(0, width)
    kind = rng.integers(0, 4)
    if kind == 0:  # stripes, horizontal or vertical
        axis = j if rng.random() < 0.5 else i
        return ((axis + phase) // width).astype(int) % k
    if kind == 1:  # diagonal stripes
        sign = 1 if rng.random() < 0.5 else -1
        return ((i + sign * j + 64 + phase) // (width * 1.4)).astype(int) % k
    if kind == 2:  # blocks of 2x2 or 4x4 output pixels with random colours
        size = 8 if rng.random() < 0.5 else 16
        return rng.integers(0, k, (4, 4))[i // size, j // size]
    angle = rng.uniform(0, 2 * np.pi)  # two regions split by a straight line
    return (i - 15.5) * np.cos(angle) + (j - 15.5) * np.sin(angle) > rng.uniform(-8, 8)


def multi_indices(rng: np.random.Generator, min_share: float = 0.15) -> np.ndarray:
    """A pattern (values 0..k-1) where every colour covers a visible share of the patch.

    A sliver of a second colour is not something a person would call multi-coloured, so
    such draws are rejected rather than labelled ambiguously.
    """
    while True:
        values, pattern = np.unique(multi_pattern(rng), return_inverse=True)
        shares = np.bincount(pattern.ravel()) / pattern.size
        if len(values) >= 2 and shares.min() >= min_share:
            return pattern.reshape(32, 32)


def multi_patches(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 8, 8, 3) patches of 2-4 clearly different colours, before variation."""
    out = np.empty((n, 8, 8, 3))
    for t in range(n):
        pattern = multi_indices(rng)
        colors = distinct_colors(rng, int(pattern.max()) + 1)
        out[t] = colors[pattern].reshape(8, 4, 8, 4, 3).mean(axis=(1, 3))
    return out


def colors_data(seed: int, n: int, multi_share: float = 0.15) -> tuple[torch.Tensor, ...]:
    """A generated set: NCHW unit-scaled patches and their label indices.

    Solid patches are labelled by the name of their mean colour (after lighting, shading
    and noise), so the label is a function of what the model actually sees.
    """
    rng = np.random.default_rng(seed)
    n_multi = int(n * multi_share)
    solid = np.clip(np.rint(add_variation(solid_patches(rng, n - n_multi), rng, 0.3)), 0, 255)
    multi = np.clip(np.rint(add_variation(multi_patches(rng, n_multi), rng, 0.1)), 0, 255)
    y = np.concatenate([name_colors(solid.mean(axis=(1, 2))), np.full(n_multi, len(PROTOTYPES))])
    x = np.concatenate([solid, multi]).transpose(0, 3, 1, 2) / 255.0
    return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64))


class ColorsNet(nn.Module):
    """Per-pixel colour features (1x1 convs), one 3x3 conv to see edges, then an MLP.

    Naming needs the mean colour (given raw, so the head can draw curved boundaries in
    colour space); "multi-coloured" needs how different neighbours are, so the head also
    sees the mean and maximum of the edge features. ~24k parameters, ~100 KB of ONNX.
    """

    def __init__(self, n_classes: int = len(COLOR_LABELS)) -> None:
        super().__init__()
        self.pixels = nn.Sequential(
            nn.Conv2d(3, 32, 1), nn.ReLU(), nn.Conv2d(32, 32, 1), nn.ReLU(),
        )  # fmt: skip
        self.edges = nn.Sequential(nn.Conv2d(32, 16, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(
            nn.Linear(3 + 32 + 2 * 16, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(),
            nn.Linear(64, n_classes),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool colour (mean) and edge features (mean, max) into the head."""
        p = self.pixels(x)
        e = self.edges(p)
        pooled = [x.mean((2, 3)), p.mean((2, 3)), e.mean((2, 3)), e.amax((2, 3))]
        return self.head(torch.cat(pooled, dim=1))


def train_colors() -> tuple[Trained, torch.Tensor]:
    """Train the colour namer on generated patches; test on a differently seeded set."""
    seed_everything()
    x_tr, y_tr = colors_data(seed=1, n=120_000)
    x_te, y_te = colors_data(seed=2, n=20_000)
    model = fit(ColorsNet(), x_tr, y_tr, epochs=30, lr=3e-3, batch_size=256)
    acc = accuracy(model, x_te, y_te)
    return Trained("colors", model, COLOR_LABELS, (3, 8, 8), COLORS_TOML, acc), x_te[:16]


# --------------------------------------------------------------------------- main

TRAINERS: dict[str, Callable[[], tuple[Trained, torch.Tensor]]] = {
    "digits": train_digits,
    "colors": train_colors,
}


def main(argv: list[str] | None = None) -> int:
    """Train the requested models and write their folders; print accuracy and sizes."""
    parser = argparse.ArgumentParser(prog="python -m modelhost.demo.train")
    parser.add_argument("models", nargs="*", help=f"any of {', '.join(TRAINERS)} (default all)")
    parser.add_argument("--out", type=Path, default=DEMO_DIR, help="parent folder")
    args = parser.parse_args(argv)
    unknown = set(args.models) - set(TRAINERS)
    if unknown:
        parser.error(f"unknown model(s): {', '.join(sorted(unknown))}")
    for name in args.models or TRAINERS:
        started = time.perf_counter()
        trained, sample = TRAINERS[name]()
        folder = write_folder(trained, args.out, sample)
        size = (folder / "model.onnx").stat().st_size
        print(
            f"{name}: held-out accuracy {trained.test_accuracy:.4f}, "
            f"model.onnx {size} bytes, {time.perf_counter() - started:.0f} s",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
