"""Test support: start the real server, build small real models (and keep the ones TensorFlow or
torch build, once per machine), make images.

Nothing here mocks modelhost. ``serve_in_process`` builds the application with modelhost's
composition root from ``modelhost serve`` flags and runs it in a thread, on 127.0.0.1 with a
free port (most tests); ``start_server`` runs ``python -m modelhost.cli serve`` as a subprocess,
for tests about the process itself (signals, kill -9, drain, exit codes). Either way models are
real ONNX files run by ONNX Runtime in real worker processes, reached over real HTTP.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import io
import itertools
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import httpx
import numpy as np
import onnx
from onnx import TensorProto, helper
from PIL import Image


class _ServerLogFile:
    """``log()`` and ``wait_for_log()`` over the server's log file, for both server kinds."""

    log_path: Path

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


@dataclass
class LiveServer(_ServerLogFile):
    """A running ``modelhost serve`` process."""

    url: str
    process: subprocess.Popen
    log_path: Path
    client: httpx.Client = field(repr=False)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

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


def wait_until_ready(server: LiveServer | InProcessServer, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    body: dict = {}
    while time.monotonic() < deadline:
        response = server.client.get("/readyz")
        body = response.json()
        if response.status_code == 200:
            return body
        if not server.alive:
            break
        time.sleep(0.05)
    raise AssertionError(f"not ready: {body}\n{server.log()}")


# -- models ----------------------------------------------------------------------------------

COLOURS = ("red", "green", "blue")


def rgb_model(folder: Path, size: int = 9, layout: str = "NCHW", toml: str = "",
              labels: tuple[str, ...] = COLOURS, outputs: int = 3,
              order: tuple[int, int, int] = (0, 1, 2)) -> Path:
    """A real ONNX model whose logits are 10 × the mean of each colour channel.

    Its answer is known for any image (the dominant colour), so tests can assert labels, crop
    geometry and preprocessing without a trained network. ``order`` permutes the weights:
    logit ``j`` is 10 × the mean of channel ``order[j]`` (a second version that answers
    differently, with the same labels).
    """
    folder.mkdir(parents=True, exist_ok=True)
    axes = [2, 3] if layout == "NCHW" else [1, 2]
    shape = ["n", 3, size, size] if layout == "NCHW" else ["n", size, size, 3]
    weight = np.zeros((3, outputs), dtype=np.float32)
    weight[:, :3] = np.eye(3, dtype=np.float32)[:, list(order)] * 10
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


def two_versions(model: Path, toml: str) -> Path:
    """A model folder with versions 1 and 2 of ``rgb_model`` that answer differently (version
    2's weights are permuted: red → "green") and the ``modelhost.toml`` given."""
    rgb_model(model / "1")
    rgb_model(model / "2", order=(2, 0, 1))
    (model / "modelhost.toml").write_text(toml)
    return model


# -- built once per machine -------------------------------------------------------------------

FRAMEWORKS = ("tensorflow-cpu", "tensorflow", "keras", "torch", "numpy", "scikit-learn", "pillow",
              "onnx", "tf2onnx", "h5py")


def machine_cache(name: str, sources: Iterable[bytes], build: Callable[[Path], object],
                  fresh: Path) -> Path:
    """A folder ``build`` fills, made once per machine and kept under
    ``$XDG_CACHE_HOME/modelhost-tests/NAME-KEY``: training or saving a test model in TensorFlow
    or torch costs tens of seconds, every session and every xdist worker. KEY hashes
    ``sources`` (the builder's code and inputs) and the versions of the frameworks and
    libraries in :data:`FRAMEWORKS`, so a change to either builds afresh;
    ``MODELHOST_TEST_CACHE=off`` always does, into the new folder ``fresh``. Sessions or
    workers building at once each build in a scratch folder and the first rename wins."""
    key = hashlib.sha256()
    for source in sources:
        key.update(source)
    for package in FRAMEWORKS:
        with contextlib.suppress(metadata.PackageNotFoundError):
            key.update(f"{package}=={metadata.version(package)}\n".encode())
    if os.environ.get("MODELHOST_TEST_CACHE") == "off":
        fresh.mkdir(parents=True, exist_ok=True)
        build(fresh)
        return fresh
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    target = home / "modelhost-tests" / f"{name}-{key.hexdigest()[:16]}"
    if not (target / "complete").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
        build(scratch)
        (scratch / "complete").write_text("")
        try:
            scratch.rename(target)
        except OSError:  # another session finished first: theirs is as good
            shutil.rmtree(scratch, ignore_errors=True)
    return target


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


# -- in-process servers ----------------------------------------------------------------------

_server_tag: contextvars.ContextVar[int | None] = contextvars.ContextVar("server", default=None)


class _ServerLog(logging.Handler):
    """One in-process server's log lines, as JSON lines in its own file.

    Records logged inside the server's event loop (and the threads it hands work to with the
    context copied) carry the server's tag; records from threads without one are kept too.
    """

    def __init__(self, tag: int, path: Path) -> None:
        super().__init__(logging.DEBUG)
        from modelhost.logs import JsonFormatter

        self.tag = tag
        self.file = path.open("a", buffering=1)
        self.setFormatter(JsonFormatter())
        self._lock_file = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        if _server_tag.get() not in (None, self.tag):
            return
        line = self.format(record)
        with self._lock_file:
            if not self.file.closed:  # a line from a thread that outlived its server
                self.file.write(line + "\n")

    def close(self) -> None:
        """Keeps the file open: ``logging.config.dictConfig`` (uvicorn's default set-up, run by
        any test that builds a ``uvicorn.Config``) closes every handler in the process."""
        super().close()

    def finish(self) -> None:
        with self._lock_file:
            self.file.close()
        super().close()


def settings_from_args(args: list[str], env: dict | None = None):
    """``Settings`` from ``modelhost serve`` flags, parsed by the real CLI command and mapped
    as it maps them."""
    import typer

    from modelhost.cli import app
    from modelhost.cli.serve import settings_of

    command = typer.main.get_command(app).commands["serve"]  # type: ignore[attr-defined]
    context = command.make_context("serve", list(args))
    saved = dict(os.environ)
    os.environ.update(env or {})
    try:
        return settings_of(context.params)
    finally:
        os.environ.clear()
        os.environ.update(saved)


class InProcessServer(_ServerLogFile):
    """The real application, built by modelhost's composition root (``assembly.build``) and
    run as ``modelhost serve`` runs it (its one start and stop order), in a thread of the test
    process, on a free 127.0.0.1 port.

    The same face as ``LiveServer`` (``url``, ``client``, ``log()``, ``wait_for_log()``,
    ``stop()``) and the same real worker processes, at a fraction of a subprocess's start-up
    cost: no interpreter, no imports, no CLI. Use ``start_server`` where the process itself is
    the point (signals, kill -9, drain, exit codes, the CLI). The gRPC port works here too: its
    service has a descriptor pool of its own, so tritonclient can share the process.
    """

    _tags = itertools.count(1)

    def __init__(self, settings, log_path: Path) -> None:
        from modelhost.assembly import build

        self.settings = settings
        self.log_path = log_path
        self.tag = next(self._tags)
        self._handler = _ServerLog(self.tag, log_path)
        root = logging.getLogger()
        root.addHandler(self._handler)
        # modelhost's and uvicorn's INFO lines, as `serve` logs them; the root logger keeps its
        # level, so the test's own libraries (httpx's request lines) stay quiet
        for name in ("modelhost", "uvicorn"):
            logger = logging.getLogger(name)
            if logger.level == logging.NOTSET or logger.level > logging.INFO:
                logger.setLevel(logging.INFO)
        self.url = ""
        self._error: BaseException | None = None
        token = _server_tag.set(self.tag)
        try:
            # what `modelhost serve` runs (assembly.serve), here run in a thread
            self.app = build(settings)
            self.core = self.app.core
        except BaseException:
            root.removeHandler(self._handler)
            self._handler.finish()
            raise
        finally:
            _server_tag.reset(token)
        self._thread = threading.Thread(target=self._run, name=f"modelhost-{self.tag}",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        _server_tag.set(self.tag)
        with contextlib.redirect_stdout(io.StringIO()):  # the "serving on" line
            try:
                self.app.run()
            except BaseException as exc:  # shown by wait_started(); stop() returns 1
                self._error = exc

    def wait_started(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not (self.app.started and self.app.url):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"in-process server did not start ({self._error!r}):\n"
                                     f"{self.log()[-4000:]}")
            time.sleep(0.02)
        self.url = self.app.url or ""
        self.client = httpx.Client(base_url=self.url, timeout=60)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def wait_stopped(self, timeout: float) -> bool:
        """True once the server has stopped by itself (a start that failed) within
        ``timeout`` seconds."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def worker_pids(self) -> list[int]:
        """This server's live model workers (other in-process servers have their own)."""
        return [pid for model in list(self.core.registry.models.values())
                for pid in model.pool.pids()]

    def stop(self, timeout: float = 30) -> int:
        """Stop serving (the application's stop: drain, ports, workers, prediction log); the
        exit status ``modelhost serve`` would have had."""
        self.app.request_stop()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.app.request_stop(hurry=True)
            self._thread.join(10)
        if hasattr(self, "client"):
            self.client.close()
        logging.getLogger().removeHandler(self._handler)
        self._handler.finish()
        if self._error is not None or self._thread.is_alive():
            return 1
        if self.core.registry.lifecycle.fatal:
            return 1
        return 0 if self.app.started else 1


def serve_in_process_until_exit(args: list[str], tmp: Path,
                                timeout: float = 240) -> tuple[int, list[dict]]:
    """``modelhost serve ARGS`` in this process, for a start that must stop by itself (a model
    that does not load): the exit status ``serve`` would have had and the JSON log lines. A
    subprocess would add an interpreter and the server's imports (~1.5 s of CPU) to each case;
    tests/cli/test_cli.py keeps the real process's exit status and stderr."""
    stamp = time.monotonic_ns()
    settings = settings_from_args([*args, "--port", "0", "--db",
                                   f"sqlite:///{tmp / f'predictions-{stamp}.db'}"])
    server = InProcessServer(settings, tmp / f"server-{stamp}.log")
    assert server.wait_stopped(timeout), \
        f"still serving after {timeout:g}s:\n{server.log()[-4000:]}"
    return server.stop(), [json.loads(line) for line in server.log().splitlines()]


def serve_in_process(args: list[str], tmp: Path, *, wait_ready: bool = True,
                     timeout: float = 120, env: dict | None = None) -> InProcessServer:
    """``start_server``'s in-process twin: ``modelhost serve ARGS --port 0`` in this process."""
    assert all(k.startswith("MODELHOST_") for k in env or {}), \
        "other variables would have to reach child processes: use start_server"
    stamp = time.monotonic_ns()
    if "--db" not in args and "MODELHOST_DB" not in (env or {}):
        args = [*args, "--db", f"sqlite:///{tmp / f'predictions-{stamp}.db'}"]
    settings = settings_from_args([*args, "--port", "0"], env)
    server = InProcessServer(settings, tmp / f"server-{stamp}.log")
    server.wait_started(timeout)
    if wait_ready:
        wait_until_ready(server, timeout)
    return server
