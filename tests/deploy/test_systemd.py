"""The systemd unit passes ``systemd-analyze verify`` with warnings treated as errors, and its
stop timeout leaves modelhost's drain grace room to finish."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

from modelhost.settings import Settings

UNIT_DIR = Path(__file__).resolve().parents[2] / "deploy" / "systemd"


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # keys are case-sensitive
    parser.read(UNIT_DIR / "modelhost.service")
    return parser


def _env_file() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in (UNIT_DIR / "modelhost.env").read_text().splitlines()
             if line.strip() and not line.startswith("#"))
    return {key: value for key, value in pairs}


def test_unit_verifies_without_warnings(tmp_path):
    # The only change: ExecStart points at this interpreter instead of /opt/modelhost, which
    # does not exist here (verify checks that the executable does).
    text = (UNIT_DIR / "modelhost.service").read_text()
    assert "ExecStart=/opt/modelhost/bin/modelhost serve" in text
    unit = tmp_path / "modelhost.service"
    here = f"{sys.executable} -m modelhost.cli"
    unit.write_text(text.replace("/opt/modelhost/bin/modelhost", here))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr  # unknown keys only warn: fail on them


def test_unit_hardening_and_stop_timeout():
    service = _unit()["Service"]
    assert service["User"] == "modelhost"
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    writable = service["ReadWritePaths"].split()
    env = _env_file()
    settings = Settings(**{k.removeprefix("MODELHOST_").lower(): v for k, v in env.items()})
    for path in (settings.journal_dir, settings.cache_dir, Path(settings.db.split("///")[1])):
        assert any(path.is_relative_to(w) for w in writable), path  # it can write there
    assert settings.models is not None and str(settings.models) in service["ReadOnlyPaths"]
    assert float(service["TimeoutStopSec"]) >= settings.drain_grace + 10
    assert service["Restart"] == "on-failure"
