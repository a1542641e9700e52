"""The demo models through the real HTTP API: accuracy on held-out data and real photos."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from ..support import image_bytes


def held_out_digits() -> tuple[list[bytes], np.ndarray]:
    """The digits the demo was not trained on, rendered as a person's PNG: dark ink on white,
    32×32 pixels (each dataset cell is a 4×4 block of the original bitmap)."""
    digits = load_digits()
    _, x_test, _, y_test = train_test_split(digits.images, digits.target, test_size=0.25,
                                            random_state=0, stratify=digits.target)
    pngs = []
    for cells in x_test:
        ink = np.round(255 * (1 - cells / 16)).astype(np.uint8)
        pngs.append(image_bytes(Image.fromarray(ink, "L").resize((32, 32), Image.NEAREST)))
    return pngs, y_test


@pytest.mark.slow
def test_digits_demo_is_accurate_on_held_out_digits(demo_server):
    pngs, labels = held_out_digits()

    def classify(png: bytes) -> str:
        response = httpx.post(f"{demo_server}/api/models/digits/predict",
                              files={"image": ("d.png", png, "image/png")}, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()["predictions"][0]["label"]

    with ThreadPoolExecutor(8) as pool:
        predicted = list(pool.map(classify, pngs))
    accuracy = np.mean([p == str(t) for p, t in zip(predicted, labels, strict=True)])
    assert len(pngs) == 450 and accuracy >= 0.95, accuracy


@pytest.mark.parametrize(("photo", "expected", "min_score"), [
    ("coffee", {"espresso"}, 0.9),
    ("chelsea", {"tabby cat", "tiger cat", "Egyptian cat", "tabby", "Egyptian Mau"}, 0.2),
])
def test_imagenet_demo_on_real_photos(demo_server, photo, expected, min_score):
    import skimage.data

    pixels = getattr(skimage.data, photo)()
    data = image_bytes(Image.fromarray(pixels), "JPEG", quality=90)
    response = httpx.post(f"{demo_server}/api/models/imagenet/predict",
                          files={"image": (f"{photo}.jpg", data, "image/jpeg")}, timeout=60)
    best = response.json()["predictions"][0]
    assert best["label"] in expected, response.json()["predictions"]
    assert best["score"] > min_score


def test_colors_demo_names_the_colour_under_the_point(demo_server):
    image = Image.new("RGB", (300, 200), (0, 0, 128))
    image.paste((255, 255, 0), (0, 0, 100, 200))
    data = image_bytes(image)
    labels = []
    for x in (50, 250):
        response = httpx.post(f"{demo_server}/api/models/colors/predict",
                              params={"x": x, "y": 100}, files={"image": ("c.png", data)})
        labels.append(response.json()["predictions"][0]["label"])
    assert labels == ["yellow", "navy"]


def test_the_port_opens_before_the_imagenet_demo_is_converted(demo_start):
    """The README's first ``modelhost serve`` converts the imagenet demo (tens of seconds):
    meanwhile the port is open, /healthz is 200 and /readyz says what is happening."""
    _, seen = demo_start
    converting = [s for s in seen if s["models"].get("imagenet", {}).get("state") == "converting"]
    assert converting, seen[:3]
    first = converting[0]
    assert first["healthz"] == 200 and first["readyz"] == 503 and first["ready"] is False
    progress = first["models"]["imagenet"]["progress"]
    assert progress["stage"] == "converting the imagenet demo to ONNX (once)"
    assert progress["timeout"] > 0 and progress["seconds"] >= 0
    assert seen[-1]["readyz"] == 200
    ready = seen[-1]["models"]["imagenet"]
    assert ready["state"] == "ready" and ready["workers_ready"] == 2 and "progress" not in ready


def test_demo_models_are_listed_and_ready(demo_server):
    models = {m["name"]: m for m in httpx.get(f"{demo_server}/api/models").json()["models"]}
    assert set(models) == {"imagenet", "digits", "colors"}
    assert all(m["state"] == "ready" for m in models.values())
    assert models["imagenet"]["labels"] == 1000
    assert models["imagenet"]["input"]["resize"] == 256
    assert models["imagenet"]["input"]["pipeline"] == "torchvision"
    assert models["digits"]["input"]["pipeline"] == "default"  # no pipeline in its toml
