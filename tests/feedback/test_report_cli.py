"""``modelhost report`` reads the same numbers from the database as the API computes."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

from modelhost.feedback.store import Store

from .test_store import feedback, prediction


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "modelhost.cli", "report", *args],
                          capture_output=True, text=True, timeout=120)


def test_report_prints_tables_json_and_csv(db_url, tmp_path):
    store = Store(db_url)
    store.migrate()
    store.write([prediction(1), prediction(2), prediction(3, top=("dog", "cat")),
                 feedback(1, "cat", True), feedback(2, "dog", False),
                 prediction(4, version="2"), feedback(4, "cat", True)])
    store.close()

    as_json = run("pets", "--db", db_url, "--json", "--version", "1")
    assert as_json.returncode == 0, as_json.stderr
    out = json.loads(as_json.stdout)
    assert (out["predictions"], out["with_feedback"]) == (3, 2)
    assert out["top1"]["hits"] == 1 and out["topk"]["hits"] == 2
    assert out["confusions"] == [{"actual": "dog", "predicted": "cat", "count": 1}]

    table = run("pets", "--db", db_url, "--csv", str(tmp_path / "labels.csv"))
    assert table.returncode == 0, table.stderr
    assert "top-1" in table.stdout and "66.7 %" in table.stdout  # 2 of 3 over both versions
    with (tmp_path / "labels.csv").open() as handle:
        rows = {r["label"]: r for r in csv.DictReader(handle)}
    assert rows["cat"]["predicted"] == "3" and rows["dog"]["actual"] == "1"


def test_report_says_when_the_database_is_unreachable():
    from ..postgres import free_port

    done = run("pets", "--db", f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x")
    assert done.returncode == 1 and "unavailable" in done.stdout
    bad = run("pets", "--db", "ftp://nowhere")
    assert bad.returncode == 2 and "--db" in bad.stderr


def test_report_of_an_unknown_model_is_not_found(db_url):
    Store(db_url).migrate()
    done = run("nosuch", "--db", db_url)
    assert done.returncode == 1
    assert done.stderr == "modelhost: no model named 'nosuch' in the prediction log\n"
    as_json = run("nosuch", "--db", db_url, "--json")
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout) == {"error": {
        "code": "not_found", "message": "no model named 'nosuch' in the prediction log"}}
