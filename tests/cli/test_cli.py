"""The CLI: serve's start-up errors and --keep-going, predict and inspect, local and remote."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ..support import image_bytes, rgb_model, solid, start_server

CLI = [sys.executable, "-m", "modelhost.cli"]


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def test_broken_model_stops_the_server_with_a_clear_line(tmp_path):
    rgb_model(tmp_path / "repo" / "good")
    (tmp_path / "repo" / "bad").mkdir()
    (tmp_path / "repo" / "bad" / "model.onnx").write_bytes(b"\x08\x01garbage")
    result = run("serve", str(tmp_path / "repo"), "--port", "0")
    assert result.returncode == 1
    assert "bad" in result.stderr and "model.onnx" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""  # no URL: nothing is served
    assert "Uvicorn running" not in result.stderr


def test_the_url_is_printed_once_the_models_are_ready(tmp_path):
    rgb_model(tmp_path / "repo" / "rgb")
    server = start_server([str(tmp_path / "repo")], tmp_path, wait_ready=False)
    try:
        assert server.client.get("/readyz").status_code == 200  # at once: already loaded
    finally:
        assert server.stop() == 0
    assert server.process.stdout.read() == ""  # printed once


def test_labels_that_do_not_match_the_outputs(tmp_path):
    rgb_model(tmp_path / "m", labels=("a", "b"))
    result = run("serve", str(tmp_path / "m" / "model.onnx"), "--port", "0")
    assert result.returncode == 1
    assert "2 labels, but the model has 3 outputs" in result.stderr


def test_duplicate_labels_stop_the_server_or_only_their_model(tmp_path):
    rgb_model(tmp_path / "repo" / "good")
    rgb_model(tmp_path / "repo" / "dup", labels=("red", "green", "red"))
    result = run("serve", str(tmp_path / "repo"), "--port", "0")
    assert result.returncode == 1
    failure = [line for line in result.stderr.splitlines() if "failed to load" in line]
    assert len(failure) == 1 and "dup" in failure[0] and "model.onnx" in failure[0]
    assert "labels.txt line 3: 'red' repeats line 1" in failure[0]
    server = start_server([str(tmp_path / "repo"), "--keep-going"], tmp_path, wait_ready=False)
    try:  # the URL is printed once loading is over
        models = server.client.get("/readyz").json()["models"]
        assert models["good"]["state"] == "ready"
        assert models["dup"] == {"state": "failed", "workers_ready": 0, "error": (
            "labels.txt line 3: 'red' repeats line 1 (feedback by label would be ambiguous)")}
    finally:
        assert server.stop() == 0


def test_missing_model_and_bad_config_exit_2(tmp_path):
    result = run("serve", str(tmp_path / "nothing"))
    assert result.returncode == 2 and "no such file or folder" in result.stderr
    rgb_model(tmp_path / "m", toml="[input]\nlayout = 'CHW'\n")
    result = run("serve", str(tmp_path / "m"))
    assert result.returncode == 2 and "input.layout" in result.stderr


def test_a_prediction_log_from_a_newer_modelhost_stops_the_start_in_one_line(tmp_path):
    """A schema revision this modelhost does not know: one line naming the database and the
    revision, exit 2, no traceback, no URL (the migration once failed inside uvicorn's lifespan
    with a traceback and exit 3)."""
    import sqlite3

    rgb_model(tmp_path / "m")
    database = tmp_path / "newer.db"
    with contextlib.closing(sqlite3.connect(database)) as db:
        db.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
        db.execute("INSERT INTO alembic_version VALUES ('9999')")
        db.commit()
    result = run("serve", str(tmp_path / "m"), "--port", "0", "--db", f"sqlite:///{database}")
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("modelhost: ")]
    assert len(lines) == 1, result.stderr
    assert str(database) in lines[0] and "'9999'" in lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_keep_going_serves_the_rest_and_reports_the_failure(tmp_path):
    rgb_model(tmp_path / "repo" / "good")
    (tmp_path / "repo" / "bad").mkdir()
    (tmp_path / "repo" / "bad" / "model.onnx").write_bytes(b"garbage")
    server = start_server([str(tmp_path / "repo"), "--keep-going"], tmp_path, wait_ready=False)
    try:
        import time

        for _ in range(200):
            ready = server.client.get("/readyz").json()
            states = {name: m["state"] for name, m in ready["models"].items()}
            if states["good"] == "ready" and states["bad"] != "loading":  # either may be first
                break
            time.sleep(0.05)
        assert server.client.get("/readyz").status_code == 503
        assert ready["models"]["bad"]["state"] == "failed" and ready["models"]["bad"]["error"]
        models = {m["name"]: m for m in server.client.get("/api/models").json()["models"]}
        assert models["bad"]["state"] == "failed" and "model.onnx" in models["bad"]["error"]
        ok = server.client.post("/api/models/good/predict",
                                files={"image": ("r.png", solid((255, 0, 0)))})
        assert ok.json()["predictions"][0]["label"] == "red"
        bad = server.client.post("/api/models/bad/predict",
                                 files={"image": ("r.png", solid((255, 0, 0)))})
        assert bad.status_code == 503 and bad.json()["error"]["code"] == "not_ready"
    finally:
        assert server.stop() == 0


@pytest.mark.slow
def test_predict_locally_and_against_a_server(tmp_path):
    model = rgb_model(tmp_path / "m")
    files = []
    for name, colour in (("r.png", (255, 0, 0)), ("g.jpg", (0, 255, 0))):
        path = tmp_path / name
        path.write_bytes(solid(colour, fmt="PNG" if name.endswith("png") else "JPEG"))
        files.append(str(path))
    local = run("predict", str(model), *files, "--json", "--top-k", "2")
    assert local.returncode == 0, local.stderr
    lines = [json.loads(line) for line in local.stdout.splitlines()]
    assert [line["predictions"][0]["label"] for line in lines] == ["red", "green"]
    assert all(len(line["predictions"]) == 2 for line in lines)
    table = run("predict", str(model), files[0])
    assert "red" in table.stdout and "score" in table.stdout
    server = start_server([str(model)], tmp_path)
    try:
        remote = run("predict", server.url, *files, "--json")
        lines = [json.loads(line) for line in remote.stdout.splitlines()]
        assert [line["predictions"][0]["label"] for line in lines] == ["red", "green"]
        assert all(line["id"] for line in lines)
    finally:
        assert server.stop() == 0


def test_predict_crop_option(tmp_path):
    from ..support import halves

    model = rgb_model(tmp_path / "m")
    path = tmp_path / "h.png"
    path.write_bytes(image_bytes(halves((255, 0, 0), (0, 0, 255), (200, 100))))
    result = run("predict", str(model), str(path), "--x", "190", "--y", "50", "--crop", "0.2",
                 "--json")
    assert json.loads(result.stdout)["predictions"][0]["label"] == "blue"


def test_inspect_prints_what_was_read(tmp_path):
    model = rgb_model(tmp_path / "m", toml='[input]\nscaling = "tf"\nresize = 12\n')
    result = run("inspect", str(model))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for text in ("image", "float32", "[-1, 3, 9, 9]", "logits", "ReduceMean×1", "MatMul×1",
                 "9 parameters", "labels (3): red, green, blue", "scaling tf",
                 "shorter side 12"):
        assert text in out, (text, out)


def test_help_shows_every_default_extra_name_and_flag():
    serve = subprocess.run([*CLI, "serve", "--help"], capture_output=True, text=True,
                           timeout=60).stdout
    flat = " ".join(serve.split())  # help is wrapped at 80 columns
    for text in ("Address to bind [default: 127.0.0.1].", "(needs modelhost[grpc])",
                 "Requests allowed at once [the rate].", "[loopback names when bound to loopback]",
                 "Address-space bytes per worker process [no limit].", "[under the cache dir]",
                 "Queued requests per model before 503 [256]."):
        assert text in flat, text
    options = [line.split()[0] for line in serve.splitlines() if line.startswith("  --")]
    assert "--keep-going" in options and "--allow-urls" in options
    assert "<bool>" not in serve
    report = subprocess.run([*CLI, "report", "--help"], capture_output=True, text=True,
                            timeout=60).stdout
    assert "[the server's default]" in report


def test_log_lines_are_text_at_a_terminal_and_json_otherwise(tmp_path):
    """stderr on a terminal (a pty here): text lines, no ``uvicorn.error`` label; piped: JSON."""
    import pty

    rgb_model(tmp_path / "m")
    main, side = pty.openpty()
    process = subprocess.Popen([*CLI, "serve", str(tmp_path / "m"), "--port", "0", "--db",
                                f"sqlite:///{tmp_path / 'p.db'}"], stdout=subprocess.PIPE,
                               stderr=side, text=True)
    os.close(side)
    try:
        assert process.stdout.readline().startswith("modelhost serving on http://")
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    output = b""
    with contextlib.suppress(OSError):  # EIO once the process is gone
        while chunk := os.read(main, 65536):
            output += chunk
    os.close(main)
    lines = output.decode().splitlines()
    assert any(line.endswith("INFO   model m loaded; layout 1 worker × auto threads, max "
                             "batch 8 (default)") for line in lines), lines
    assert not any(line.startswith("{") or "uvicorn.error" in line for line in lines), lines
    piped = start_server([str(tmp_path / "m")], tmp_path)
    assert piped.stop() == 0
    records = [json.loads(line) for line in piped.log().splitlines()]
    assert {"uvicorn", "modelhost.registry"} <= {r["logger"] for r in records}
    assert "uvicorn.error" not in {r["logger"] for r in records}


def test_predict_and_bench_against_a_server_that_is_down_say_so_at_once(tmp_path):
    from ..support import free_port

    image = tmp_path / "r.png"
    image.write_bytes(solid((255, 0, 0)))
    url = f"http://127.0.0.1:{free_port()}"
    for command in (["predict", url, str(image)],
                    ["bench", url, str(image), "-m", "rgb", "--duration", "30"]):
        started = time.monotonic()
        done = run(*command, timeout=60)
        assert done.returncode == 2, done
        assert done.stderr == f"modelhost: nothing answers at {url} (connection refused)\n"
        assert time.monotonic() - started < 15  # not the 30 s run


def test_serve_keeps_its_start_up_objects_out_of_garbage_collections(tmp_path):
    """A full collection walked every object FastAPI, SQLAlchemy and NumPy left behind: ~120 ms
    with every thread stopped, the p99 of /healthz under load. ``modelhost serve`` freezes them
    once its models are loaded, and reports each collection's pause on /metrics."""
    import re

    rgb_model(tmp_path / "repo" / "m")
    server = start_server([str(tmp_path / "repo")], tmp_path)
    try:
        line = server.wait_for_log("start-up objects kept out of garbage collections")
        frozen = int(re.search(r"(\d+) start-up objects kept out", line).group(1))
        assert frozen > 50_000
        for _ in range(200):  # requests allocate: the young generations collect
            assert server.client.post("/api/models/m/predict", content=solid((0, 200, 0)),
                                      headers={"Content-Type": "image/png"}).status_code == 200
        metrics = server.client.get("/metrics").text
        counts = {g: float(n) for g, n in re.findall(
            r'modelhost_gc_pause_seconds_count\{generation="(\d)"\} (\S+)', metrics)}
        assert counts["2"] >= 1 and counts["0"] >= 1, counts  # the freeze's own full collection
    finally:
        assert server.stop() == 0
