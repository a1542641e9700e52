"""Accuracy and latency figures from stored rows: pure functions, so that the API, the CLI
report and the dashboard show the same numbers.

Top-1 counts every feedback (``correct`` is known for all); top-k counts the feedback that
named a label (a bare ``{"correct": false}`` says the top-1 was wrong, not what was right).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from datetime import datetime, timedelta

Z95 = 1.959964  # two-sided 95 % normal quantile


def wilson(hits: int, n: int) -> list[float] | None:
    """95 % Wilson score interval of a proportion (good at small n and near 0 or 1)."""
    if n == 0:
        return None
    p = hits / n
    denom = 1 + Z95**2 / n
    centre = (p + Z95**2 / (2 * n)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / denom
    return [round(max(0.0, centre - half), 6), round(min(1.0, centre + half), 6)]


def rate(hits: int, n: int) -> dict:
    return {"hits": hits, "total": n, "rate": round(hits / n, 6) if n else None,
            "ci95": wilson(hits, n)}


def accuracy(judged: list[dict], predictions: int) -> dict:
    """Hit rates, per-label precision and recall, confusions and rejections."""
    named = [r for r in judged if r["label"] is not None]
    top1_hits = sum(1 for r in judged if r["correct"])
    topk_hits = sum(1 for r in named if r["label"] in r["labels"])
    k = max((len(r["labels"]) for r in judged), default=0)
    return {
        "predictions": predictions,
        "with_feedback": len(judged),
        "feedback_share": round(len(judged) / predictions, 6) if predictions else None,
        "top1": rate(top1_hits, len(judged)),
        "topk": {"k": k, **rate(topk_hits, len(named))},
        "labels": per_label(judged),
        "confusions": confusions(named),
        "rejected": rejected(judged),
        "over_time": over_time(judged),
    }


def per_label(judged: list[dict]) -> list[dict]:
    """Precision (of the top-1 saying L) and recall (of the images users called L)."""
    predicted: Counter[str] = Counter()
    actual: Counter[str] = Counter()
    hits: Counter[str] = Counter()
    for r in judged:
        predicted[r["top1"]] += 1
        if r["label"] is not None:
            actual[r["label"]] += 1
        if r["correct"]:
            hits[r["top1"]] += 1
    rows = []
    for label in sorted(set(predicted) | set(actual), key=str):
        rows.append({
            "label": label, "predicted": predicted[label], "actual": actual[label],
            "hits": hits[label],
            "precision": round(hits[label] / predicted[label], 6) if predicted[label] else None,
            "recall": round(hits[label] / actual[label], 6) if actual[label] else None,
        })
    return rows


def confusions(named: list[dict], limit: int = 10) -> list[dict]:
    """The most frequent (what users chose, what the model said first) pairs that differ."""
    pairs = Counter((r["label"], r["top1"]) for r in named if r["label"] != r["top1"])
    return [{"actual": a, "predicted": p, "count": n} for (a, p), n in pairs.most_common(limit)]


def rejected(judged: list[dict], limit: int = 20) -> list[dict]:
    """The newest predictions users said were wrong."""
    wrong = [r for r in judged if not r["correct"]][-limit:]
    return [{"id": r["id"], "time": _iso(r["created_at"]), "version": r["version"],
             "predicted": r["top1"], "label": r["label"]} for r in reversed(wrong)]


def over_time(judged: list[dict]) -> list[dict]:
    """Top-1 accuracy per version per time bucket (hour or day, by the window's length)."""
    if not judged:
        return []
    step = _step(judged[0]["created_at"], judged[-1]["created_at"])
    cells: dict[tuple[str, datetime], list[int]] = defaultdict(lambda: [0, 0])
    for r in judged:
        cell = cells[(r["version"], _floor(r["created_at"], step))]
        cell[0] += bool(r["correct"])
        cell[1] += 1
    return [{"version": v, "start": _iso(t), "feedback": n, "top1_rate": round(h / n, 6),
             "ci95": wilson(h, n)}
            for (v, t), (h, n) in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][0]))]


QUANTILES = (0.5, 0.9, 0.99)


def latency_buckets(first: datetime, last: datetime, buckets: int = 48) -> tuple[int, list]:
    """Bucket length in whole seconds, and the starts of buckets 1…``buckets`` - 1."""
    seconds = max(1, math.ceil((last - first).total_seconds() / buckets) + 1)
    return seconds, [first + timedelta(seconds=i * seconds) for i in range(1, buckets)]


def latency(first: datetime | None, seconds: int | None,
            ranks: list[tuple[int, int, int, float]]) -> dict:
    """Latency percentiles (numpy's linear interpolation) and throughput per bucket, from the
    rows ``Store.latency_ranks`` picked around each percentile's position."""
    if first is None or seconds is None:
        return {"bucket_seconds": None, "series": []}
    by_bucket: dict[int, dict[int, float]] = defaultdict(dict)
    counts: dict[int, int] = {}
    for bucket, n, rank, ms in ranks:
        by_bucket[bucket][rank] = ms
        counts[bucket] = n
    series = []
    for index in sorted(by_bucket):
        n, values = counts[index], by_bucket[index]
        p50, p90, p99 = (_interpolate(values, q * (n - 1)) for q in QUANTILES)
        series.append({
            "start": _iso(first + timedelta(seconds=index * seconds)), "count": n,
            "per_second": round(n / seconds, 4), "p50_ms": round(p50, 3),
            "p90_ms": round(p90, 3), "p99_ms": round(p99, 3),
        })
    return {"bucket_seconds": seconds, "series": series}


def _interpolate(values: dict[int, float], position: float) -> float:
    low = math.floor(position)
    if position == low:
        return values[low]
    return values[low] + (position - low) * (values[low + 1] - values[low])


def _step(first: datetime, last: datetime) -> timedelta:
    return timedelta(hours=1) if last - first <= timedelta(days=2) else timedelta(days=1)


def _floor(at: datetime, step: timedelta) -> datetime:
    if step == timedelta(days=1):
        return at.replace(hour=0, minute=0, second=0, microsecond=0)
    return at.replace(minute=0, second=0, microsecond=0)


def _iso(at: datetime) -> str:
    return at.isoformat(timespec="seconds")
