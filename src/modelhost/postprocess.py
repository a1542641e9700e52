"""From a model's output row to ranked labels: softmax when needed, then top-k."""

from __future__ import annotations

import numpy as np

from .types import Label


def probabilities(row: np.ndarray, kind: str) -> np.ndarray:
    """The row as probabilities. ``auto`` trusts rows that already look like a distribution
    (all in [0, 1], summing to 1 within 1e-3) and softmaxes anything else."""
    row = row.astype(np.float64, copy=False)
    if kind == "probabilities" or (
        kind == "auto" and row.min() >= 0 and row.max() <= 1 and abs(row.sum() - 1) < 1e-3
    ):
        return row
    shifted = np.exp(row - row.max())
    return shifted / shifted.sum()


def top_k(probs: np.ndarray, labels: tuple[str, ...], k: int) -> list[Label]:
    """The ``k`` best classes, best first; classes without a label are named by index."""
    k = max(1, min(k, probs.shape[0]))
    best = np.argpartition(-probs, k - 1)[:k] if k < probs.shape[0] else np.arange(probs.shape[0])
    best = best[np.argsort(-probs[best], kind="stable")]
    return [
        Label(labels[i] if i < len(labels) else str(i), int(i), float(probs[i])) for i in best
    ]
