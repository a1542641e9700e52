"""The alert rules load in Prometheus's own checker, fire on the series they are meant for
(``promtool test rules``), and name only series a real modelhost exports."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from ..support import solid

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


def promtool(*args: str) -> str:
    result = subprocess.run(["promtool", *args], cwd=RULES, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_rules_are_valid_and_fire_when_meant_to():
    assert "SUCCESS: 6 rules found" in promtool("check", "rules", "alerts.yml")
    assert "SUCCESS" in promtool("test", "rules", "alerts.test.yml")


def test_every_alert_is_tested():
    rules = yaml.safe_load((RULES / "alerts.yml").read_text())["groups"][0]["rules"]
    tests = yaml.safe_load((RULES / "alerts.test.yml").read_text())["tests"]
    tested = {case["alertname"] for test in tests for case in test["alert_rule_test"]
              if case["exp_alerts"]}
    assert tested == {rule["alert"] for rule in rules}


def test_rules_name_series_modelhost_exports(repo_server):
    answer = repo_server.client.post("/api/models/rgb/predict", content=solid((250, 10, 10)),
                                     headers={"Content-Type": "image/png"})
    assert answer.status_code == 200
    exported = set(re.findall(r"^(modelhost_\w+?)(?:\{| )", repo_server.client.get(
        "/metrics").text, re.M))
    used = set(re.findall(r"modelhost_\w+", (RULES / "alerts.yml").read_text()))
    used -= {"modelhost_queue_seconds", "modelhost_inference_seconds"}  # named in prose
    assert used and used <= exported, used - exported
