"""``modelhost tune``: the table of measured layouts, the choice, the cache that ``inspect`` (and
``serve``) then read, and the exit codes."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from ..support import rgb_model
from .test_cli import CLI, run


@pytest.mark.slow
def test_tune_prints_every_layout_and_caches_the_choice(tmp_path):
    repo = tmp_path / "repo"
    rgb_model(repo / "free")
    rgb_model(repo / "pinned", toml="[workers]\nreplicas = 1\nthreads = 1\n"
                                    "[batching]\nmax_batch_size = 4\n")
    cache = tmp_path / "cache"
    result = run("tune", str(repo), "--budget", "10", "--cache-dir", str(cache))
    assert result.returncode == 0, result.stdout + result.stderr
    rows = re.findall(r"│ (\d+) +│ (\d+) +│ (\d+) +│ ([\d.]+) +│ ([\d.]+) +│ *(\w*)", result.stdout)
    cores = len(os.sched_getaffinity(0))
    assert len({(r[0], r[1]) for r in rows}) == len({1, max(1, cores // 2), cores})
    assert {r[2] for r in rows} == {"1", "8"}
    assert all(float(r[3]) > 0 and float(r[4]) > 0 for r in rows)
    chosen = [r for r in rows if r[5] == "chosen"]
    assert len(chosen) == 1
    assert re.search(r"free: \d+ workers? × \d+ threads?, max batch \d+ \(measured in [\d.]+ s\)",
                     result.stdout)
    assert "pinned: 1 worker × 1 thread, max batch 4 (modelhost.toml): set in full" \
        in result.stdout

    record = json.loads(next((cache / "tuning").glob("free-*.json")).read_text())
    assert (record["layout"]["replicas"], record["layout"]["threads"],
            record["layout"]["max_batch_size"]) == tuple(int(v) for v in chosen[0][:3])
    assert not list((cache / "tuning").glob("pinned-*"))

    inspect = subprocess.run([*CLI, "inspect", str(repo / "free")], capture_output=True,
                             text=True, timeout=120, env={**os.environ,
                                                          "MODELHOST_CACHE_DIR": str(cache)})
    assert inspect.returncode == 0, inspect.stderr
    assert re.search(r"layout: .* \(cache; measured \d{4}-\d\d-\d\d", inspect.stdout)


def test_tune_exit_codes(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.onnx").write_bytes(b"not an onnx model")
    result = run("tune", str(broken), "--budget", "3", "--cache-dir", str(tmp_path / "c"))
    assert result.returncode == 1, result.stdout + result.stderr
    # the server's check of the file refuses it before any worker starts, and says why
    assert "(default; the model cannot load: model.onnx: not an ONNX model" in \
        result.stdout.replace("\n", "")

    missing = run("tune", str(tmp_path / "nothing"))
    assert missing.returncode == 2
    assert "no such file or folder" in missing.stderr
