"""Softmax only when needed, then top-k with labels."""

import numpy as np
import pytest

from modelhost.postprocess import probabilities, top_k


def test_logits_are_softmaxed_and_probabilities_kept():
    logits = np.array([2.0, 1.0, 0.1], dtype=np.float32)
    probs = probabilities(logits, "auto")
    assert probs.sum() == pytest.approx(1.0) and probs[0] == pytest.approx(0.659, abs=1e-3)
    already = np.array([0.7, 0.2, 0.1], dtype=np.float32)
    np.testing.assert_allclose(probabilities(already, "auto"), already, rtol=1e-6)
    assert probabilities(already, "logits")[0] == pytest.approx(0.4640, abs=1e-3)


def test_top_k_orders_and_labels():
    probs = np.array([0.1, 0.5, 0.15, 0.25])
    best = top_k(probs, ("a", "b", "c"), 3)
    assert [(p.label, p.index) for p in best] == [("b", 1), ("3", 3), ("c", 2)]
    assert [p.score for p in best] == [0.5, 0.25, 0.15]
    assert len(top_k(probs, (), 10)) == 4
