"""Wilson, McNemar exact and AUC against scipy / scikit-learn and published values."""

from __future__ import annotations

import itertools
import random

import pytest

from probes import stats


def test_wilson_known_values():
    # Newcombe (1998), Table I: 81/263 -> 0.2553 to 0.3662; 0/10 -> 0 to 0.2775
    assert stats.wilson(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert stats.wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert stats.wilson(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert stats.wilson(0, 0) == (0.0, 1.0)


def test_wilson_matches_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    for k, n in [(0, 5), (3, 7), (17, 40), (99, 100), (250, 376)]:
        ci = scipy_stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert stats.wilson(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)


def test_mcnemar_exact_matches_scipy_binomtest():
    scipy_stats = pytest.importorskip("scipy.stats")
    for b, c in itertools.product(range(0, 25, 3), range(0, 25, 4)):
        if b + c == 0:
            assert stats.mcnemar_exact(b, c) == 1.0
            continue
        expected = scipy_stats.binomtest(b, b + c, 0.5, alternative="two-sided").pvalue
        assert stats.mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-9), (b, c)


def test_mcnemar_known_values():
    assert stats.mcnemar_exact(10, 0) == pytest.approx(2 / 1024)
    assert stats.mcnemar_exact(1, 9) == pytest.approx(22 / 1024)  # 2 * (1 + 10) / 2**10
    assert stats.mcnemar_exact(5, 5) == 1.0


def test_auc_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = random.Random(0)
    pos = [rng.gauss(1, 1) for _ in range(40)] + [0.5, 0.5]
    neg = [rng.gauss(0, 1) for _ in range(30)] + [0.5]
    expected = metrics.roc_auc_score([1] * len(pos) + [0] * len(neg), pos + neg)
    assert stats.auc(pos, neg) == pytest.approx(expected, abs=1e-12)
    assert stats.auc([1, 2], [3, 4]) == 0.0
    assert stats.auc([], [1]) is None


def test_auc_ci_hanley_mcneil():
    # Hanley & McNeil (1982) eq. 2 by hand: AUC 0.8, 50/50: Q1 = 2/3, Q2 = 32/45 -> SE = 0.04450
    lo, hi = stats.auc_ci(0.8, 50, 50)
    assert (hi - lo) / 2 / stats.Z95 == pytest.approx(0.04450, abs=5e-5)
