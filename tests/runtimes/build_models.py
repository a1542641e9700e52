"""Build every model format for real, with each framework's own predictions as references.

Run as ``python build_models.py keras|torch|python OUT`` in a subprocess, after
:func:`write_images` (OUT/images) (TensorFlow and torch
each take seconds to import and must not share the test process's warning filters). Writes the
models into ``OUT/repo/<name>/`` and, per model, the framework's probabilities for the test
images into ``OUT/expected/<name>.json``. The digits models are trained in seconds on
scikit-learn's digits; the MobileNetV2 keeps its random initial weights (a real architecture).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DIGITS_TEST = 30  # images written for the tests (taken from the end of the data set)
MOBILE_SIZE = 96


def digits():
    """Digits as 0–255 greyscale 8×8 pixels (what a PNG of them holds) and their labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.images * 16).clip(0, 255).round().astype(np.uint8), data.target


def write_images(out: Path) -> None:
    """The test images: the last digits as 8×8 PNGs, and colourful 96×96 RGB pictures."""
    pixels, labels = digits()
    folder = out / "images"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(DIGITS_TEST):
        index = len(pixels) - DIGITS_TEST + i
        Image.fromarray(pixels[index], "L").save(folder / f"digit-{i:02d}-{labels[index]}.png")
    rng = np.random.default_rng(1)
    for i in range(6):
        yy, xx = np.mgrid[0:MOBILE_SIZE, 0:MOBILE_SIZE]
        base = np.stack([xx * 2.6 + 40 * i, yy * 2.6, rng.integers(0, 256, xx.shape)], axis=-1)
        Image.fromarray((base % 256).astype(np.uint8), "RGB").save(folder / f"photo-{i}.png")


def digit_inputs(out: Path) -> tuple[list[str], np.ndarray]:
    files = sorted((out / "images").glob("digit-*.png"))
    return [f.name for f in files], np.stack([np.asarray(Image.open(f)) for f in files])


def photo_inputs(out: Path) -> tuple[list[str], np.ndarray]:
    files = sorted((out / "images").glob("photo-*.png"))
    return [f.name for f in files], np.stack([np.asarray(Image.open(f).convert("RGB"))
                                              for f in files])


def expect(out: Path, name: str, files: list[str], probs: np.ndarray) -> None:
    folder = out / "expected"
    folder.mkdir(parents=True, exist_ok=True)
    rows = {f: [float(v) for v in row] for f, row in zip(files, probs, strict=True)}
    (folder / f"{name}.json").write_text(json.dumps(rows))


def labels(folder: Path, names) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "labels.txt").write_text("".join(f"{n}\n" for n in names))


# -- Keras / TensorFlow ---------------------------------------------------------------------------


def build_keras(out: Path) -> None:
    import keras
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    keras.utils.set_random_seed(0)
    pixels, targets = digits()
    train = pixels[:-DIGITS_TEST, :, :, None].astype("float32")
    inputs = keras.Input((8, 8, 1), name="pixels")
    x = keras.layers.Rescaling(1 / 255)(inputs)  # the model scales its own input
    x = keras.layers.Conv2D(16, 3, activation="relu")(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(10, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(train, targets[:-DIGITS_TEST], epochs=12, batch_size=32, verbose=0)
    repo = out / "repo"
    files, batch = digit_inputs(out)
    batch = batch[..., None].astype("float32")
    expected = model.predict(batch, verbose=0)
    for name in ("digits_keras", "digits_h5", "digits_savedmodel", "digits_frozen"):
        labels(repo / name, range(10))
        expect(out, name, files, expected)
    model.save(repo / "digits_keras" / "model.keras")
    model.save(repo / "digits_h5" / "model.h5")
    model.export(str(repo / "digits_savedmodel" / "saved_model"), verbose=False)
    function = tf.function(lambda x: model(x, training=False)).get_concrete_function(
        tf.TensorSpec([None, 8, 8, 1], tf.float32, name="pixels"))
    frozen = convert_variables_to_constants_v2(function)
    tf.io.write_graph(frozen.graph.as_graph_def(), str(repo / "digits_frozen"), "model.pb",
                      as_text=False)

    # A Lambda layer: Python code inside the file.
    inputs = keras.Input((8, 8, 1), name="pixels")
    x = keras.layers.Lambda(lambda t: t * (1 / 255))(inputs)
    outputs = keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(x))
    lam = keras.Model(inputs, outputs)
    labels(out / "lambda" / "lambda_keras", range(10))
    lam.save(out / "lambda" / "lambda_keras" / "model.keras")
    # Scaling hidden in Python code cannot be detected: the documented override says so.
    (out / "lambda" / "lambda_keras" / "modelhost.toml").write_text('[input]\nscaling = "none"\n')
    expect(out, "lambda_keras", files, lam.predict(batch, verbose=0))

    # A real architecture with random weights, fed the `tf` preset ([-1, 1]).
    mobile = keras.applications.MobileNetV2(
        input_shape=(MOBILE_SIZE, MOBILE_SIZE, 3), alpha=0.35, weights=None, classes=10)
    labels(repo / "mobilenet", [f"class{i}" for i in range(10)])
    (repo / "mobilenet" / "modelhost.toml").write_text('[input]\nscaling = "tf"\n')
    mobile.save(repo / "mobilenet" / "model.h5")
    photo_files, photos = photo_inputs(out)
    prepared = keras.applications.mobilenet_v2.preprocess_input(photos.astype("float32"))
    expect(out, "mobilenet", photo_files, mobile.predict(prepared, verbose=0))


# -- PyTorch ---------------------------------------------------------------------------------


def build_torch(out: Path) -> None:
    import torch

    Noisy = _noisy_class()  # a class, defined where torch is imported

    torch.manual_seed(0)
    pixels, targets = digits()
    train = torch.from_numpy(pixels[:-DIGITS_TEST, None].astype("float32") / 255)
    target = torch.from_numpy(targets[:-DIGITS_TEST]).long()
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(16 * 6 * 6, 10),
    )
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(60):
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(train), target)
        loss.backward()
        optimiser.step()
    model.eval()
    repo = out / "repo"
    files, batch = digit_inputs(out)
    tensor = torch.from_numpy(batch[:, None].astype("float32") / 255)
    with torch.no_grad():
        expected = torch.softmax(model(tensor), dim=1).numpy()
    for name in ("torch_script", "torch_export"):
        labels(repo / name, range(10))
        expect(out, name, files, expected)
    (repo / "torch_script" / "modelhost.toml").write_text("[input]\nsize = [8, 8]\n")
    torch.jit.save(torch.jit.trace(model, tensor[:1]), repo / "torch_script" / "model.pt")
    program = torch.export.export(model, (tensor[:2],),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, repo / "torch_export" / "model.pt2")
    # The same network written with x.view(x.shape[0], -1): a trace at batch 2 bakes
    # Reshape [2, -1] into the graph; the conversion must keep the batch dynamic.
    viewed = torch.export.export(_view_net(model), (tensor[:2],),
                                 dynamic_shapes=({0: torch.export.Dim("batch")},))
    labels(out / "dynamic" / "view_export", range(10))
    expect(out, "view_export", files, expected)
    torch.export.save(viewed, out / "dynamic" / "view_export" / "model.pt2")

    # Noise added to the logits: exported, ONNX draws other random numbers, so the
    # verification must fail and the native runtime must serve.
    noisy = torch.jit.script(Noisy(model))
    labels(out / "fallback" / "noisy_torch", range(10))
    (out / "fallback" / "noisy_torch" / "modelhost.toml").write_text("[input]\nsize = [8, 8]\n")
    torch.jit.save(noisy, out / "fallback" / "noisy_torch" / "model.pt")


def _view_net(model):
    import torch

    class ViewNet(torch.nn.Module):
        def __init__(self, inner: torch.nn.Sequential) -> None:
            super().__init__()
            self.conv, self.fc = inner[0], inner[3]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.conv(x))
            return self.fc(x.view(x.shape[0], -1))

    return ViewNet(model)


def _noisy_class():
    import torch

    class Noisy(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = self.inner(x)
            return logits + 5 * torch.rand_like(logits)

    return Noisy


# -- a user's pipeline.py -------------------------------------------------------------------------

PIPELINE_BATCH = '''
import numpy as np


class DigitsPipeline:
    input_shape = (8, 8, 1)

    def __init__(self, model_dir):
        weights = np.load(f"{model_dir}/weights.npz")
        self.coef, self.intercept = weights["coef"], weights["intercept"]

    def predict(self, batch):
        logits = batch.reshape(len(batch), -1) @ self.coef.T + self.intercept
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)
'''

PIPELINE_IMAGE = '''
import numpy as np


class DigitsByImage:
    def __init__(self, model_dir):
        weights = np.load(f"{model_dir}/weights.npz")
        self.coef, self.intercept = weights["coef"], weights["intercept"]

    def predict_image(self, image):
        pixels = np.asarray(image.convert("L").resize((8, 8)), dtype=np.float64).reshape(-1)
        logits = self.coef @ pixels + self.intercept
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        return {str(i): float(p) for i, p in enumerate(probs)}
'''


def build_python(out: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    pixels, targets = digits()
    flat = pixels.reshape(len(pixels), -1).astype(np.float64)
    classifier = LogisticRegression(max_iter=2000).fit(flat[:-DIGITS_TEST], targets[:-DIGITS_TEST])
    repo = out / "pipelines"
    files, batch = digit_inputs(out)
    expected = classifier.predict_proba(batch.reshape(len(batch), -1).astype(np.float64))
    for name, code in (("digits_pipeline", PIPELINE_BATCH), ("digits_by_image", PIPELINE_IMAGE)):
        folder = repo / name
        labels(folder, range(10))
        np.savez(folder / "weights.npz", coef=classifier.coef_, intercept=classifier.intercept_)
        (folder / "pipeline.py").write_text(code.lstrip())
        expect(out, name, files, expected)
    (repo / "digits_pipeline" / "modelhost.toml").write_text('[input]\nscaling = "none"\n')


if __name__ == "__main__":  # the test images must exist first (write_images)
    which, target = sys.argv[1], Path(sys.argv[2])
    {"keras": build_keras, "torch": build_torch, "python": build_python}[which](target)
