"""Served scores equal the framework's own prediction on the fully decoded photo.

A real pretrained ImageNet classifier (the imagenet demo's EfficientNet-Lite0 weights) is served
as ONNX (the demo itself) and as TorchScript, and a real Keras architecture as ``.keras``. For
each photo, awkward sizes included, with and without a crop point, the reference is what a user's
notebook does: open the photo, turn it upright, convert to RGB, cut the crop at whole pixels
(the documented rule), run the library's own pipeline (torchvision's ``Resize`` +
``CenterCrop``; Keras' ``load_img``), then the framework's own model. Every score must agree
within 1e-4 and the top-1 label must be the same.
"""

from __future__ import annotations

import functools
import io
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image, ImageOps
from skimage import data as photos
from sklearn.datasets import load_sample_images

from ..support import LiveServer, image_bytes, machine_cache, start_server

TOLERANCE = 1e-4
CROP = 0.5
TORCH_TOML = """\
[input]
pipeline = "torchvision"
size = [224, 224]
scaling = "inception128"
resize = 256
resample = "bicubic"
{extra}
[output]
kind = "logits"

[workers]
replicas = 1
threads = 1
"""
KERAS_TOML = """\
[input]
pipeline = "keras"
resample = "bilinear"
scaling = "tf"

[workers]
replicas = 1
"""


def _photos() -> dict[str, bytes]:
    china, flower = load_sample_images().images
    astronaut = Image.fromarray(photos.astronaut())
    rgba = Image.fromarray(photos.chelsea()).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))
    exif = Image.Exif()
    exif[0x0112] = 6
    ramp = np.linspace(0, 65535, 301 * 207).reshape(207, 301).astype(np.uint16)
    jpeg = {"quality": 90}
    return {
        "coffee.jpg": image_bytes(Image.fromarray(photos.coffee()), "JPEG", **jpeg),
        "china 640x427.jpg": image_bytes(Image.fromarray(china), "JPEG", **jpeg),
        "flower.png": image_bytes(Image.fromarray(flower), "PNG"),
        "odd 333x201.jpg": image_bytes(astronaut.resize((333, 201)), "JPEG", **jpeg),
        "portrait 512x600.jpg": image_bytes(astronaut.resize((512, 600)), "JPEG", **jpeg),
        "large 4000x3000.jpg": image_bytes(astronaut.resize((4000, 3000)), "JPEG", **jpeg),
        "tiny 9x9.png": image_bytes(astronaut.resize((9, 9)), "PNG"),
        "exif portrait.jpg": image_bytes(Image.fromarray(photos.coffee()), "JPEG",
                                         exif=exif.tobytes(), **jpeg),
        "grey.jpg": image_bytes(Image.fromarray(photos.camera()), "JPEG", **jpeg),
        "alpha.png": image_bytes(rgba, "PNG"),
        "sixteen-bit.png": image_bytes(Image.fromarray(ramp), "PNG"),
    }


PHOTOS = _photos()
POINTS = [None, (0.4, 0.6)]  # no crop; a crop of half the shorter side around (40 %, 60 %)
CASES = [(name, point) for name in PHOTOS for point in POINTS]


def _upright(data: bytes, point: tuple[float, float] | None) -> Image.Image:
    """The notebook's image: opened, upright, RGB, and cropped by the documented rule (a
    square of CROP × shorter side around the point, clipped, edges rounded half up)."""
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    if point is None:
        return image
    w, h = image.size
    x, y, half = point[0] * w, point[1] * h, CROP * min(w, h) / 2
    box = [max(0.0, x - half), max(0.0, y - half), min(w, x + half), min(h, y + half)]
    return image.crop(tuple(int(v + 0.5) for v in box))


def _params(point, data: bytes) -> dict:
    if point is None:
        return {"top_k": 1000}
    w, h = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).size
    return {"top_k": 1000, "x": point[0] * w, "y": point[1] * h, "crop": CROP}


def _served(url: str, model: str, name: str, point) -> np.ndarray:
    data = PHOTOS[name]
    response = httpx.post(f"{url}/api/models/{model}/predict", params=_params(point, data),
                          files={"image": (name, data)}, timeout=120)
    assert response.status_code == 200, response.text
    scores = {p["index"]: p["score"] for p in response.json()["predictions"]}
    return np.asarray([scores[i] for i in range(len(scores))])


def _assert_same(served: np.ndarray, reference: np.ndarray, what: str) -> None:
    assert served.shape == reference.shape, what
    worst = float(np.abs(served - reference).max())
    assert worst <= TOLERANCE, f"{what}: max |Δ| {worst:.3g}"
    assert served.argmax() == reference.argmax(), what


# -- EfficientNet-Lite0 in torch: the reference, and the TorchScript file -------------------

@pytest.fixture(scope="module")
def effnet():
    import torch

    from modelhost.demo.imagenet import load_model

    torch.set_num_threads(1)
    return load_model()


def _torch_reference(model, image: Image.Image) -> np.ndarray:
    import torch
    from torchvision import transforms

    pipeline = transforms.Compose([
        transforms.Resize(256, transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(224), transforms.PILToTensor()])
    x = (pipeline(image).float() - 127.0) / 128.0
    with torch.no_grad():
        return torch.softmax(model(x[None]).double(), dim=1)[0].numpy()


@pytest.fixture(scope="module")
def torch_references(effnet) -> dict:
    return {(name, point): _torch_reference(effnet, _upright(PHOTOS[name], point))
            for name, point in CASES}


@pytest.fixture(scope="module")
def repo(effnet, tmp_path_factory) -> Path:
    """effnet_ts (TorchScript, exact), effnet_fast (the same file, decode = "fast") and
    mobilenet (a .keras MobileNetV2)."""
    import torch

    from modelhost.demo.imagenet import imagenet_labels

    root = tmp_path_factory.mktemp("faithful") / "models"
    labels = "\n".join(imagenet_labels()) + "\n"
    with warnings.catch_warnings():  # TorchScript is deprecated, and still what people have
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(effnet, torch.zeros(1, 3, 224, 224))
    for name, extra in (("effnet_ts", ""), ("effnet_fast", 'decode = "fast"\n')):
        (root / name).mkdir(parents=True)
        traced.save(str(root / name / "model.pt"))
        (root / name / "labels.txt").write_text(labels)
        (root / name / "modelhost.toml").write_text(TORCH_TOML.format(extra=extra))
    _keras_model(root / "mobilenet", tmp_path_factory.mktemp("keras-fresh"))
    return root


# Keras runs in a subprocess (TensorFlow's import warnings are errors in this process): it
# builds the model and predicts on the notebook's images, saved losslessly beside it.
KERAS_SCRIPT = """
import sys, pathlib, numpy as np, keras
from keras.applications.mobilenet_v2 import preprocess_input
folder = pathlib.Path(sys.argv[1])
keras.utils.set_random_seed(0)
model = keras.applications.MobileNetV2(weights=None, alpha=0.35, input_shape=(128, 128, 3),
                                       classes=10)
model.save(folder / "model.keras")
files = sorted((folder / "reference").iterdir())
batch = np.stack([keras.utils.img_to_array(keras.utils.load_img(
    f, target_size=(128, 128), interpolation="bilinear")) for f in files])
np.savez(folder / "expected.npz", names=[f.stem for f in files],
         probs=model.predict(preprocess_input(batch), verbose=0))
"""


def _keras_model(folder: Path, fresh: Path) -> None:
    """A real Keras architecture (MobileNetV2, seeded weights), its .keras file, and Keras'
    own probabilities for every photo and crop (load_img + img_to_array + preprocess_input),
    as keras-expected.npz beside the repository. Built once per machine (``machine_cache``,
    keyed by the script, the reference images and the library versions)."""
    pngs = [image_bytes(_upright(PHOTOS[name], point), "PNG", compress_level=0)
            for name, point in CASES]
    built = machine_cache("faithful-keras", [KERAS_SCRIPT.encode(), *pngs],
                          functools.partial(_build_keras, pngs), fresh)
    folder.mkdir(parents=True)
    shutil.copy(built / "model.keras", folder / "model.keras")
    (folder / "labels.txt").write_text("".join(f"class {i}\n" for i in range(10)))
    (folder / "modelhost.toml").write_text(KERAS_TOML)
    shutil.copy(built / "expected.npz", folder.parent.parent / "keras-expected.npz")


def _build_keras(pngs: list[bytes], out: Path) -> None:
    """Run KERAS_SCRIPT in ``out`` on the reference images (saved losslessly)."""
    (out / "reference").mkdir()
    for index, png in enumerate(pngs):
        (out / "reference" / f"{index:03d}.png").write_bytes(png)
    subprocess.run([sys.executable, "-c", KERAS_SCRIPT, str(out)], check=True,
                   capture_output=True, timeout=600)


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory) -> LiveServer:
    tmp = tmp_path_factory.mktemp("faithful-server")
    live = start_server([str(repo), "--runtime", "native"], tmp, timeout=600)
    yield live
    assert live.stop() == 0


@pytest.mark.slow
@pytest.mark.parametrize("point", POINTS, ids=["whole photo", "crop point"])
def test_onnx_demo_equals_torch_on_the_fully_decoded_photo(demo_server, torch_references,
                                                           point):
    for name in PHOTOS:
        _assert_same(_served(demo_server, "imagenet", name, point),
                     torch_references[name, point], f"onnx {name}")


@pytest.mark.slow
@pytest.mark.parametrize("point", POINTS, ids=["whole photo", "crop point"])
def test_torchscript_equals_torch_on_the_fully_decoded_photo(server, torch_references, point):
    for name in PHOTOS:
        _assert_same(_served(server.url, "effnet_ts", name, point),
                     torch_references[name, point], f"torchscript {name}")


@pytest.mark.slow
@pytest.mark.parametrize("point", POINTS, ids=["whole photo", "crop point"])
def test_keras_equals_keras_on_the_fully_decoded_photo(server, repo, point):
    expected = np.load(repo.parent / "keras-expected.npz")["probs"].astype(np.float64)
    for index, (name, case_point) in enumerate(CASES):
        if case_point == point:
            _assert_same(_served(server.url, "mobilenet", name, point), expected[index],
                         f"keras {name}")


@pytest.mark.slow
def test_fast_decode_reports_its_drift_and_still_serves(server, torch_references):
    body = server.client.get("/api/models/effnet_fast").json()
    drift = body["input"]["drift"]
    assert body["input"]["decode"] == "fast" and body["input"]["pipeline"] == "torchvision"
    assert drift["images"] == 4 and drift["source"] == "generated"
    assert 0 < drift["max_score_diff"] < 1 and 0 <= drift["top1_agreement"] <= 1
    log = server.wait_for_log("model effnet_fast loaded; decode fast: max |Δscore|")
    assert f"top-1 agreement {drift['top1_agreement']:.0%} on 4 generated images" in log
    exact = server.client.get("/api/models/effnet_ts").json()["input"]
    assert exact["decode"] == "exact" and exact["drift"] is None
    served = _served(server.url, "effnet_fast", "coffee.jpg", None)
    assert served.argmax() == torch_references["coffee.jpg", None].argmax()  # espresso
