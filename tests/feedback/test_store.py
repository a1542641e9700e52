"""The store on a real SQLite file and a real PostgreSQL server: migrations, idempotent
writes (replays never duplicate), windows and retention."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import inspect

from modelhost.feedback.schema import metadata
from modelhost.feedback.store import BadDatabaseUrl, Store, StoreUnavailable

NOW = datetime.now(UTC).timestamp()


def prediction(n: int, *, version: str = "1", at: float = NOW, top=("cat", "dog")) -> dict:
    return {"kind": "prediction", "id": f"{n:032x}", "time": at, "model": "pets",
            "version": version, "sha256": "ab" * 32, "x": 1.0, "y": 2.0, "crop": 0.5,
            "labels": list(top), "scores": [0.75, 0.25], "decode_ms": 1.5, "queue_ms": 0.0,
            "inference_ms": 2.0, "total_ms": 4.0, "batch_size": 1, "client": "alice",
            "request_id": "r"}


def feedback(n: int, label: str | None, correct: bool, at: float = NOW) -> dict:
    return {"kind": "feedback", "prediction_id": f"{n:032x}", "label": label,
            "correct": correct, "time": at, "client": "bob"}


@pytest.fixture
def store(db_url):
    store = Store(db_url)
    store.migrate()
    yield store
    store.close()


def test_migrations_build_exactly_the_schema(store):
    store.migrate()  # running again on every start changes nothing
    found = inspect(store.engine)
    for table in metadata.sorted_tables:
        assert {c["name"] for c in found.get_columns(table.name)} == set(table.columns.keys())
    indexes = {i["name"] for i in found.get_indexes("predictions")}
    assert {"ix_predictions_model_created", "ix_predictions_created"} <= indexes


def test_a_log_from_before_the_bench_flag_is_upgraded_in_place(db_url):
    """A database at revision 0001 (no ``bench`` column) keeps its rows, all unmarked."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text

    from modelhost.feedback.store import MIGRATIONS

    old = Store(db_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with old.engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0001")
        conn.execute(text("INSERT INTO predictions (id, created_at, model, version, "
                          "input_sha256, labels, scores, decode_ms, queue_ms, inference_ms, "
                          "total_ms, batch_size) VALUES ('a', '2026-11-01 10:00:00', 'pets', "
                          "'1', 'ab', '[\"cat\"]', '[1.0]', 0, 0, 0, 1, 1)"))
    old.close()
    store = Store(db_url)
    store.migrate()
    assert store.count_predictions("pets", None, None, None) == 1  # kept, not bench
    store.close()


def test_replayed_records_are_stored_once_and_feedback_is_updated_in_place(store):
    batch = [prediction(1), prediction(2), feedback(1, "dog", False)]
    store.write(batch)
    store.write(batch)  # a replay after a crash between commit and delete
    store.write([feedback(1, "cat", True, NOW + 60)])
    assert store.count_predictions("pets", None, None, None) == 2
    assert store.prediction(f"{1:032x}") == {"model": "pets", "version": "1",
                                             "labels": ["cat", "dog"], "top1": "cat"}
    kept = store.feedback_of(f"{1:032x}")
    assert kept["label"] == "cat" and kept["correct"] is True and kept["client"] == "bob"
    assert kept["updated_at"] > kept["created_at"]
    judged = store.judged("pets", None, None, None)
    assert [(r["id"][-1], r["label"]) for r in judged] == [("1", "cat")]


def test_windows_by_time_and_version(store):
    hour = 3600
    store.write([prediction(1, at=NOW - 3 * hour), prediction(2, version="2", at=NOW - hour),
                 prediction(3, version="2", at=NOW)])
    since = datetime.fromtimestamp(NOW - 2 * hour, UTC)
    assert store.count_predictions("pets", since, None, None) == 2
    assert store.count_predictions("pets", None, since, None) == 1
    assert store.count_predictions("pets", None, None, "2") == 2
    assert store.count_predictions("other", None, None, None) == 0
    assert store.time_span("pets", since, None, "2") == (
        datetime.fromtimestamp(NOW - hour, UTC), datetime.fromtimestamp(NOW, UTC))
    assert store.time_span("pets", None, None, "3") is None


def test_latency_is_aggregated_in_the_database_as_numpy_would(store):
    """Percentiles from the few rows the database picks equal numpy's over every row."""
    import numpy as np

    from modelhost.feedback import report

    rng = np.random.default_rng(0)
    times = {0: rng.gamma(2, 10, 37), 200: rng.gamma(2, 10, 1), 500: rng.gamma(2, 10, 120)}
    records, n = [], 0
    for offset, values in times.items():
        for ms in values:
            n += 1
            records.append({**prediction(n, at=NOW + offset + n * 1e-3), "total_ms": float(ms)})
    store.write(records)
    first, last = store.time_span("pets", None, None, None)
    seconds, edges = report.latency_buckets(first, last, buckets=4)
    assert seconds == 127 and len(edges) == 3
    ranks = store.latency_ranks("pets", None, None, None, edges, report.QUANTILES)
    assert len(ranks) <= 3 * 3 * 3  # never every row
    series = report.latency(first, seconds, ranks)["series"]
    assert [b["count"] for b in series] == [37, 1, 120]
    for bucket, values in zip(series, times.values(), strict=True):
        expected = np.percentile(values, [50, 90, 99])
        got = [bucket["p50_ms"], bucket["p90_ms"], bucket["p99_ms"]]
        assert np.allclose(got, expected, atol=1e-3), (got, expected)
    assert series[1]["start"] == (first + timedelta(seconds=seconds)).isoformat(
        timespec="seconds")


def test_retention_deletes_old_predictions_with_their_feedback(store):
    old = NOW - 10 * 86400
    store.write([prediction(1, at=old), feedback(1, "cat", True, old), prediction(2)])
    assert store.delete_before(datetime.now(UTC) - timedelta(days=7)) == 1
    assert store.prediction(f"{1:032x}") is None and store.feedback_of(f"{1:032x}") is None
    assert store.count_predictions("pets", None, None, None) == 1


def test_an_unreachable_database_is_reported_as_unavailable(tmp_path):
    from ..postgres import free_port

    store = Store(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none")
    with pytest.raises(StoreUnavailable):
        store.migrate()
    with pytest.raises(BadDatabaseUrl):
        Store("mysql://somewhere/db")
    with pytest.raises(BadDatabaseUrl):
        Store("not a url")
