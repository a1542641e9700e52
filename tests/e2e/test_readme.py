"""The README's commands, checked against a clean clone of this repository."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from ..support import image_bytes, start_server

ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block, "the README must start with a bash block"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_readme_starts_with_install_run_and_test_commands():
    install_and_run, test = readme_commands()[:2]
    assert install_and_run == 'pip install -e ".[demo]" && modelhost serve'  # not every framework
    assert test == "bash .ci/run"
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install -q --disable-pip-version-check -e ".[all,dev]"' in ci
    assert "python -m pytest -q" in ci and "apt-get install" in ci


def test_the_readme_names_the_extra_of_each_model_format():
    text = (ROOT / "README.md").read_text()
    extras = set(re.findall(r"^all = \[\"modelhost\[(.*)\]\"\]", (ROOT / "pyproject.toml")
                            .read_text(), re.M)[0].split(","))
    rows = {m.group(1) for m in re.finditer(r"^\| [^|]+ \| `(\w+)` \|", text, re.M)}
    assert rows == extras  # demo, torch, tensorflow, redis, grpc: each in the table


def test_a_clean_clone_serves_the_shipped_demo(tmp_path):
    if not (ROOT / ".git").exists():
        raise AssertionError("run the tests from a git checkout")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    env = {"PYTHONPATH": str(clone / "src")}
    server = start_server([str(clone / "src/modelhost/demo/digits")], tmp_path, env=env)
    try:
        page = httpx.get(f"{server.url}/")
        assert page.status_code == 200 and "<html" in page.text.lower()
        seven = np.full((8, 8), 255, np.uint8)
        seven[1, 1:7] = 0
        for row in range(2, 7):
            seven[row, 7 - row] = 0
        data = image_bytes(Image.fromarray(seven, "L").resize((32, 32), Image.NEAREST))
        response = server.client.post("/api/models/digits/predict",
                                      files={"image": ("7.png", data)})
        assert response.status_code == 200
        assert response.json()["predictions"][0]["label"] == "7"
        module = subprocess.run(
            [sys.executable, "-c", "import modelhost, sys; print(modelhost.__file__)"],
            capture_output=True, text=True, env={**os.environ, **env}, check=True)
        assert module.stdout.startswith(str(clone))
    finally:
        assert server.stop() == 0
