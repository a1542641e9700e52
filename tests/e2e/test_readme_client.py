"""The README's Python client example, run as written against a server with the digits demo."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import numpy as np
from PIL import Image

from modelhost.demo import DEMO_DIR

from ..support import image_bytes, serve_in_process

ROOT = Path(__file__).resolve().parents[2]


def test_readme_python_client_example(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python client"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    seven = np.full((8, 8), 255, np.uint8)
    seven[1, 1:7] = 0
    for row in range(2, 7):
        seven[row, 7 - row] = 0
    (tmp_path / "digit.png").write_bytes(
        image_bytes(Image.fromarray(seven, "L").resize((32, 32), Image.NEAREST)))
    server = serve_in_process([str(DEMO_DIR / "digits")], tmp_path)
    try:
        monkeypatch.chdir(tmp_path)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(code.replace("http://127.0.0.1:8000", server.url), {})
        lines = printed.getvalue().splitlines()
        assert lines[0].split()[0] == "7" and float(lines[0].split()[1]) > 0.2
        assert [line.split()[1] for line in lines[1:3]] == ["7", "7"]
        assert lines[3] == "['digits']" and lines[4] == "True"
    finally:
        assert server.stop() == 0
