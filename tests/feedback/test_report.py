"""The accuracy arithmetic on hand-made rows, checked against numbers worked out by hand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from scipy.stats import binomtest

from modelhost.feedback import report

T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)


def row(n, top, label, correct, version="1", at=T0):
    return {"id": f"p{n}", "created_at": at, "version": version, "labels": top,
            "top1": top[0], "scores": [0.5] * len(top), "label": label, "correct": correct}


def test_wilson_matches_the_textbook_values():
    # 8 of 10: the Wilson 95 % interval is (0.4902, 0.9433).
    assert report.wilson(8, 10) == pytest.approx([0.490162, 0.943318], abs=1e-6)
    assert report.wilson(0, 5)[0] == 0.0
    assert report.wilson(5, 5)[1] == 1.0
    assert report.wilson(0, 0) is None


def test_accuracy_counts_top1_topk_labels_and_confusions():
    rows = [
        row(1, ["cat", "dog"], "cat", True),
        row(2, ["cat", "dog"], "dog", False),
        row(3, ["dog", "cat"], "dog", True),
        row(4, ["dog", "cat"], "fox", False),
        row(5, ["cat", "dog"], None, False),  # only "wrong" is known
    ]
    out = report.accuracy(rows, predictions=10)
    assert out["with_feedback"] == 5 and out["feedback_share"] == 0.5
    assert out["top1"]["hits"] == 2 and out["top1"]["total"] == 5
    assert out["topk"] == {"k": 2, **report.rate(3, 4)}  # row 5 has no label: not counted
    by_label = {r["label"]: r for r in out["labels"]}
    assert by_label["cat"] == {"label": "cat", "predicted": 3, "actual": 1, "hits": 1,
                               "precision": pytest.approx(1 / 3, abs=1e-6), "recall": 1.0}
    assert by_label["dog"]["precision"] == 0.5 and by_label["dog"]["recall"] == 0.5
    assert by_label["fox"]["precision"] is None and by_label["fox"]["recall"] == 0.0
    assert out["confusions"] == [{"actual": "dog", "predicted": "cat", "count": 1},
                                 {"actual": "fox", "predicted": "dog", "count": 1}]
    assert [r["id"] for r in out["rejected"]] == ["p5", "p4", "p2"]


def test_over_time_splits_by_version_and_hour():
    rows = [row(1, ["a"], "a", True, "1", T0), row(2, ["a"], "b", False, "1", T0),
            row(3, ["a"], "a", True, "2", T0 + timedelta(hours=1, minutes=5))]
    wilson = [list(binomtest(h, n).proportion_ci(method="wilson")) for h, n in ((1, 2), (1, 1))]
    assert report.over_time(rows) == [
        {"version": "1", "start": "2026-11-01T10:00:00+00:00", "feedback": 2, "top1_rate": 0.5,
         "ci95": pytest.approx(wilson[0], abs=1e-6)},
        {"version": "2", "start": "2026-11-01T11:00:00+00:00", "feedback": 1, "top1_rate": 1.0,
         "ci95": pytest.approx(wilson[1], abs=1e-6)},
    ]


def test_latency_of_an_empty_window():
    assert report.latency(None, None, []) == {"bucket_seconds": None, "series": []}
