"""Test support: start the real server as a subprocess, build small real models, make images.

Nothing here mocks modelhost: servers are ``python -m modelhost.cli serve`` on 127.0.0.1 with
a free port, and models are real ONNX files run by ONNX Runtime in real worker processes.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import onnx
from onnx import TensorProto, helper
from PIL import Image


@dataclass
class LiveServer:
    """A running ``modelhost serve`` process."""

    url: str
    process: subprocess.Popen
    log_path: Path
    client: httpx.Client = field(repr=False)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 15) -> str:
        """The log once it holds ``text``: log lines reach the file from a writer thread,
        so a line about a request may land just after its response."""
        deadline = time.monotonic() + timeout
        while text not in (log := self.log()):
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} never logged:\n{log[-4000:]}")
            time.sleep(0.05)
        return log

    def worker_pids(self) -> list[int]:
        """Direct children of the server process (its model workers)."""
        return children_of(self.process.pid)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(10)
        self.client.close()
        return code


def children_of(pid: int) -> list[int]:
    """Live worker processes started by ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            if int(fields[1]) == pid and fields[0] != "Z" and b"modelhost.workers" in cmdline:
                found.append(int(entry))
    return found


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for servers that need their port before starting)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def start_server(args: list[str], tmp: Path, *, wait_ready: bool = True, timeout: float = 120,
                 env: dict | None = None) -> LiveServer:
    """Start ``modelhost serve ARGS --port 0`` and wait for its URL (and readiness)."""
    stamp = time.monotonic_ns()
    log_path = tmp / f"server-{stamp}.log"
    if "--db" not in args and "MODELHOST_DB" not in (env or {}):
        args = [*args, "--db", f"sqlite:///{tmp / f'predictions-{stamp}.db'}"]  # its own
    log_file = log_path.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "modelhost.cli", "serve", *args, "--port", "0"],
        stdout=subprocess.PIPE, stderr=log_file, text=True,
        env={**os.environ, **(env or {})},
    )
    log_file.close()
    url = _read_url(process, log_path, timeout)
    server = LiveServer(url, process, log_path, httpx.Client(base_url=url, timeout=60))
    if wait_ready:
        wait_until_ready(server, timeout)
    return server


def _read_url(process: subprocess.Popen, log_path: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.startswith("modelhost serving on "):
            return line.split()[-1]
        if not line and process.poll() is not None:
            raise AssertionError(f"server exited {process.returncode}:\n{log_path.read_text()}")
    process.kill()
    raise AssertionError(f"server did not start:\n{log_path.read_text()}")


def wait_until_ready(server: LiveServer, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    body: dict = {}
    while time.monotonic() < deadline:
        response = server.client.get("/readyz")
        body = response.json()
        if response.status_code == 200:
            return body
        if server.process.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"not ready: {body}\n{server.log()}")


# -- models ----------------------------------------------------------------------------------

COLOURS = ("red", "green", "blue")


def rgb_model(folder: Path, size: int = 9, layout: str = "NCHW", toml: str = "",
              labels: tuple[str, ...] = COLOURS, outputs: int = 3) -> Path:
    """A real ONNX model whose logits are 10 × the mean of each colour channel.

    Its answer is known for any image (the dominant colour), so tests can assert labels, crop
    geometry and preprocessing without a trained network.
    """
    folder.mkdir(parents=True, exist_ok=True)
    axes = [2, 3] if layout == "NCHW" else [1, 2]
    shape = ["n", 3, size, size] if layout == "NCHW" else ["n", size, size, 3]
    weight = np.zeros((3, outputs), dtype=np.float32)
    weight[:, :3] = np.eye(3, dtype=np.float32) * 10
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["image"], ["mean"], axes=axes, keepdims=0),
            helper.make_node("MatMul", ["mean", "w"], ["logits"]),
        ],
        "rgb",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", outputs])],
        [helper.make_tensor("w", TensorProto.FLOAT, weight.shape, weight.flatten())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, folder / "model.onnx")
    (folder / "labels.txt").write_text("\n".join(labels) + "\n")
    if toml:
        (folder / "modelhost.toml").write_text(toml)
    return folder / "model.onnx"


# -- images ----------------------------------------------------------------------------------

def image_bytes(image: Image.Image, fmt: str = "PNG", **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save)
    return buffer.getvalue()


def solid(colour: tuple[int, int, int], size=(64, 48), fmt: str = "PNG") -> bytes:
    return image_bytes(Image.new("RGB", size, colour), fmt)


def halves(left=(255, 0, 0), right=(0, 0, 255), size=(200, 100)) -> Image.Image:
    """Left half one colour, right half another: crop tests know the answer per side."""
    image = Image.new("RGB", size, right)
    image.paste(left, (0, 0, size[0] // 2, size[1]))
    return image
