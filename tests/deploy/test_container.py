"""The container image, built and run for real with podman (see podman.py): it serves the demo
models from a read-only root file system as a non-root user, answers a real digit image,
reports healthy, logs the prediction on its volume, and drains and exits 0 on ``podman stop``.
Without a mount it serves what the README's ``modelhost serve`` serves, imagenet included, with
no torch in the image: its answers on real photos are the host's demo's answers."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from ..postgres import free_port
from ..support import image_bytes
from .podman import Podman

pytestmark = [pytest.mark.container, pytest.mark.slow, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]
TAG = "localhost/modelhost:test"
UID = 10001  # the image's modelhost user


@pytest.fixture(scope="module")
def podman() -> Podman:
    podman = Podman()
    seconds = podman.build(ROOT, TAG)
    print(f"\nimage built in {seconds:.1f} s")  # shown with -s; the docs quote it
    return podman


def photo_jpeg(name: str) -> bytes:
    """One of scikit-image's photographs (``coffee``, ``chelsea`` the cat) as a JPEG file."""
    import skimage.data

    return image_bytes(Image.fromarray(getattr(skimage.data, name)()), "JPEG", quality=90)


def digit_png(index: int) -> tuple[bytes, str]:
    """One of scikit-learn's digits drawn as a person would: dark ink on white, 64×64."""
    digits = load_digits()
    ink = np.round(255 * (1 - digits.images[index] / 16)).astype(np.uint8)
    png = image_bytes(Image.fromarray(ink, "L").resize((64, 64), Image.NEAREST))
    return png, str(digits.target[index])


def test_image_metadata(podman):
    info = podman.run("image", "inspect", "--format",
                      "{{.Config.User}}|{{json .Config.Healthcheck.Test}}|{{.Config.ExposedPorts}}"
                      "|{{.Config.Entrypoint}}|{{.Config.Env}}|{{.Size}}", TAG).stdout.strip()
    user, health, ports, entrypoint, env, size = info.split("|")
    assert user == "modelhost:modelhost"
    assert "/readyz" in health
    assert "8000/tcp" in ports
    assert "tini" in entrypoint
    assert "MODELHOST_MODELS=/models" in env
    print(f"\nimage size {int(size) / 1e6:.0f} MB")


def test_image_has_no_torch(podman):
    def python(code: str):
        return podman.run("run", "--rm", "--network", "none", "--entrypoint",
                          "/opt/modelhost/bin/python", TAG, "-c", code, check=False)

    served = python("import onnxruntime, modelhost.cli")  # the interpreter itself works
    assert served.returncode == 0, served.stderr
    for framework in ("torch", "tensorflow"):
        missing = python(f"import {framework}")
        assert missing.returncode == 1
        assert f"No module named '{framework}'" in missing.stderr


@pytest.mark.parametrize("init", [True, False], ids=["run--init", "tini-as-pid1"])
def test_container_serves_and_drains(podman, tmp_path, init):
    models = tmp_path / "models"
    for name in ("digits", "colors"):
        shutil.copytree(ROOT / "src" / "modelhost" / "demo" / name, models / name)
    data = tmp_path / "data"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(data, UID, UID)  # the image's user writes its log there
    port = free_port()
    name = f"modelhost-test-{port}"
    started = time.monotonic()
    podman.run("run", "-d", *(["--init"] if init else []), "--name", name,
               "--network", "host", "--read-only", "--tmpfs", "/tmp",
               "-v", f"{models}:/models:ro", "-v", f"{data}:/var/lib/modelhost",
               "-e", f"MODELHOST_PORT={port}", "-e", "MODELHOST_HOST=127.0.0.1", TAG)
    try:
        url = f"http://127.0.0.1:{port}"
        ready = _wait_ready(podman, name, url)
        assert set(ready["models"]) == {"digits", "colors"}
        print(f"\nrun to ready: {time.monotonic() - started:.1f} s")

        png, digit = digit_png(11)
        answer = httpx.post(f"{url}/api/models/digits/predict",
                            files={"image": ("digit.png", png, "image/png")}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"][0]["label"] == digit

        assert podman.run("healthcheck", "run", name, check=False).returncode == 0
        started = time.monotonic()
        podman.run("stop", "--time", "40", name)
        stopped = time.monotonic() - started
        state = podman.run("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
        logs = podman.run("logs", name).stderr
        assert state == "0", logs
        assert "draining" in logs
        assert (data / "modelhost.db").stat().st_size > 0  # the log is on the volume
        print(f"\nstop ({'--init' if init else 'tini as PID 1'}): {stopped:.2f} s")
    finally:
        podman.remove_container(name)


def test_image_serves_the_imagenet_demo_as_the_host_does(podman, demo_server, tmp_path):
    """No mount: the image serves the README demo's models, and imagenet (converted in the build
    stage) answers real photos as the host's own ``modelhost serve`` demo does."""
    data = tmp_path / "data"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(data, UID, UID)
    port = free_port()
    name = f"modelhost-test-{port}"
    started = time.monotonic()
    podman.run("run", "-d", "--init", "--name", name, "--network", "host", "--read-only",
               "--tmpfs", "/tmp", "-v", f"{data}:/var/lib/modelhost",
               "-e", f"MODELHOST_PORT={port}", "-e", "MODELHOST_HOST=127.0.0.1", TAG)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(podman, name, url)
        ready = time.monotonic() - started
        served = {m["name"]: m for m in httpx.get(f"{url}/api/models").json()["models"]}
        host = {m["name"]: m for m in httpx.get(f"{demo_server}/api/models").json()["models"]}
        assert set(served) == set(host) == {"imagenet", "digits", "colors"}
        assert served["imagenet"]["state"] == "ready"
        assert served["imagenet"]["runtime"] == "onnx runtime"
        for key in ("labels", "top_k", "input"):
            assert served["imagenet"][key] == host["imagenet"][key], key

        for photo in ("coffee", "chelsea"):
            jpeg = photo_jpeg(photo)
            answers = [httpx.post(f"{base}/api/models/imagenet/predict?top_k=5", timeout=60,
                                  files={"image": (f"{photo}.jpg", jpeg, "image/jpeg")})
                       for base in (url, demo_server)]
            assert [a.status_code for a in answers] == [200, 200], answers[0].text
            mine, reference = (a.json()["predictions"] for a in answers)
            assert [p["label"] for p in mine] == [p["label"] for p in reference], photo
            scores = np.array([[p["score"] for p in mine], [p["score"] for p in reference]])
            diff = np.abs(scores[0] - scores[1]).max()
            assert diff <= 1e-5, (photo, scores)
            # on stderr: the in-process demo server redirects stdout while it runs (shown with -s)
            print(f"\n{photo}: {[p['label'] for p in mine]}, max |score diff| {diff:.2g}; "
                  f"run to ready (3 demos) {ready:.1f} s", file=sys.stderr)
        assert mine[0]["label"] in {"tabby cat", "tiger cat", "Egyptian cat"}, mine
    finally:
        podman.remove_container(name)


def _wait_ready(podman: Podman, name: str, url: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    body: dict = {}
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{url}/readyz", timeout=2)
            body = response.json()
            if response.status_code == 200:
                return body
        except httpx.TransportError:
            pass
        running = podman.run("inspect", "--format", "{{.State.Running}}", name).stdout.strip()
        if running != "true":
            break
        time.sleep(0.3)
    raise AssertionError(f"not ready: {body}\n{podman.run('logs', name).stderr}")
