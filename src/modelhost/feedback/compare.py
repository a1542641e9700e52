"""Two versions of a model compared on real feedback: pure functions over stored rows, so that
the API (``/api/models/{m}/versions/compare``), ``modelhost report --compare`` and the dashboard
show the same numbers.

Per version: the accuracy figures of ``report.accuracy``. Between them: a two-proportion z-test
of the top-1 rates (pooled standard error for the p-value, unpooled for the 95 % interval of the
difference, as textbooks teach it; the same p-value as a 2×2 chi-square without continuity
correction), the agreement of their top-1 on the same inputs where one shadowed the other, and
a verdict in plain words with, when there is no significant difference yet, about how much more
feedback would show the difference seen so far (80 % power, 5 % two-sided).
"""

from __future__ import annotations

import math
from datetime import datetime

from .report import Z95, accuracy, rate
from .store import Store

Z80 = 0.841621  # one-sided normal quantile for 80 % power
ALPHA = 0.05


def compare(a: str, b: str, per_version: dict[str, tuple[list[dict], int]],
            pairs: list[tuple[str, str, str]]) -> dict:
    """``per_version[v]`` = (judged rows, prediction count); ``pairs`` = (answering version,
    its top-1, the shadow's top-1) for inputs both versions ran on."""
    figures = {v: _figures(*per_version[v]) for v in (a, b)}
    test = two_proportions(figures[a]["top1"]["hits"], figures[a]["top1"]["total"],
                           figures[b]["top1"]["hits"], figures[b]["top1"]["total"])
    return {"a": a, "b": b, "versions": figures, "top1_test": test,
            "shadow_agreement": agreement(pairs),
            "verdict": verdict(a, b, figures[a]["top1"], figures[b]["top1"], test)}


def from_store(store: Store, model: str, a: str, b: str, since: datetime | None,
               until: datetime | None) -> dict:
    """The comparison read from the database (blocking: call it in a thread)."""
    per_version = {v: (store.judged(model, since, until, v),
                       store.count_predictions(model, since, until, v)) for v in (a, b)}
    return compare(a, b, per_version, store.shadow_pairs(model, a, b, since, until))


def _figures(judged: list[dict], predictions: int) -> dict:
    out = accuracy(judged, predictions)
    return {key: out[key] for key in ("predictions", "with_feedback", "feedback_share", "top1",
                                      "topk", "labels", "over_time")}


def two_proportions(hits_a: int, n_a: int, hits_b: int, n_b: int) -> dict | None:
    """Difference of rates (b − a), its 95 % interval and the two-sided p-value; None when
    either version has no feedback."""
    if not n_a or not n_b:
        return None
    p_a, p_b = hits_a / n_a, hits_b / n_b
    pooled = (hits_a + hits_b) / (n_a + n_b)
    se0 = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    se = math.sqrt(p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b)
    diff = p_b - p_a
    z = diff / se0 if se0 else 0.0
    return {"difference": round(diff, 6),
            "ci95": [round(diff - Z95 * se, 6), round(diff + Z95 * se, 6)],
            "z": round(z, 6), "p_value": math.erfc(abs(z) / math.sqrt(2)) if se0 else 1.0}


def agreement(pairs: list[tuple[str, str, str]]) -> dict:
    """How often the two versions' top-1 agreed on the same inputs (shadowed requests)."""
    same = sum(1 for _, answered, shadow in pairs if answered == shadow)
    return rate(same, len(pairs))


def verdict(a: str, b: str, top1_a: dict, top1_b: dict, test: dict | None) -> str:
    """The comparison in plain words."""
    if test is None:
        missing = [v for v, t in ((a, top1_a), (b, top1_b)) if not t["total"]]
        return f"no feedback yet for version {' and '.join(missing)}"
    if test["p_value"] < ALPHA:
        better, worse = (b, a) if test["difference"] > 0 else (a, b)
        return (f"{better} is better than {worse}: top-1 {abs(test['difference']) * 100:.1f} "
                f"points higher (p = {test['p_value']:.2g})")
    needed = more_needed(top1_a, top1_b)
    if needed is None:
        return "no significant difference yet; the rates are equal so far"
    return (f"no significant difference yet; about {needed} more feedback needed per version "
            "to show the difference seen so far")


def more_needed(top1_a: dict, top1_b: dict) -> int | None:
    """Feedback per version still needed to detect the observed difference (80 % power,
    5 % two-sided); None when the observed rates are equal."""
    p_a, p_b = top1_a["rate"], top1_b["rate"]
    if p_a is None or p_b is None or p_a == p_b:
        return None
    mean = (p_a + p_b) / 2
    root = (Z95 * math.sqrt(2 * mean * (1 - mean))
            + Z80 * math.sqrt(p_a * (1 - p_a) + p_b * (1 - p_b)))
    n = math.ceil(root**2 / (p_a - p_b) ** 2)
    return max(0, n - min(top1_a["total"], top1_b["total"]))
