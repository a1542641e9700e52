"""The test session itself (tests/conftest.py): a server built with default paths writes its
prediction log and cache under a temporary folder, never the user's; the xdist groups reach
pytest-xdist."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from modelhost.settings import Settings


def test_default_paths_are_the_sessions_not_the_users():
    settings = Settings()
    db = Path(settings.db.removeprefix("sqlite:///"))
    scratch = Path(tempfile.gettempdir())
    assert db.is_relative_to(scratch) and db.name == "modelhost.db"
    assert settings.cache_dir.is_relative_to(scratch)
    for users in (Path.home() / ".local" / "share", Path.home() / ".cache"):
        assert not db.is_relative_to(users)
        assert not settings.cache_dir.is_relative_to(users)


RECORDER = '''
import json, os

def pytest_runtest_logreport(report):
    if report.when == "setup" and os.environ.get("PYTEST_XDIST_WORKER"):
        with open(os.environ["RECORDED"], "a") as out:
            out.write(json.dumps([os.environ.get("PYTEST_XDIST_WORKER"), report.nodeid]) + "\\n")
'''


def test_files_sharing_a_server_reach_xdist_as_one_group(tmp_path):
    """.ci/run's ``--dist loadgroup`` sends a group to one worker only if tests/conftest.py's
    marks are on the tests before pytest-xdist reads them (it then appends ``@GROUP`` to each
    test's id). When they came after it, every test was scheduled alone and each worker
    started the shared servers (and their conversions) again. Checked on a real xdist run
    of two files sharing ``auto_server`` (a setup plan: no fixture runs)."""
    (tmp_path / "recorder.py").write_text(RECORDER)
    tests = Path(__file__).parent
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "loadgroup",
         "--no-loadscope-reorder", "-p", "no:benchmark", "-p", "recorder", "--setup-plan",
         "-p", "no:cacheprovider", str(tests / "runtimes" / "test_serving.py"),
         str(tests / "runtimes" / "test_convert.py"), str(tests / "test_vocabulary.py")],
        capture_output=True, text=True, timeout=120, cwd=tests.parent,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")},  # own
             "RECORDED": str(tmp_path / "recorded.jsonl"),  # xdist run, not this worker's
             "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    recorded = [json.loads(line) for line in (tmp_path / "recorded.jsonl").read_text().splitlines()]
    shared = [(worker, nodeid) for worker, nodeid in recorded if "/runtimes/" in nodeid]
    assert len(shared) > 20 and all(nodeid.endswith("@auto_server") for _, nodeid in shared)
    assert len({worker for worker, _ in shared}) == 1, shared
    others = [nodeid for _, nodeid in recorded if "test_vocabulary.py" in nodeid]
    assert others and all(nodeid.endswith("@test_vocabulary.py") for nodeid in others)
