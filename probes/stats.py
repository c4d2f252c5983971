"""Statistics the probes report (stdlib only): Wilson score intervals, McNemar's exact test,
a membership AUC with its Hanley-McNeil interval.

Checked against scipy and published values in tests/probes/test_stats.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (0.0, 1.0) when n == 0."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def binom_cdf_half(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2), exactly (integer arithmetic, then one division)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    return sum(math.comb(n, i) for i in range(k + 1)) / 2**n


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value on the discordant pairs `b` (right -> wrong) and `c`
    (wrong -> right): the exact binomial test of b against Binomial(b + c, 1/2). 1.0 when b + c == 0."""
    n = b + c
    if n == 0:
        return 1.0
    return min(1.0, 2 * binom_cdf_half(min(b, c), n))


def auc(positives: Sequence[float], negatives: Sequence[float]) -> float | None:
    """Probability that a random positive scores above a random negative (ties count half);
    None when either side is empty. O((n+m) log(n+m)) through ranks."""
    n1, n0 = len(positives), len(negatives)
    if n1 == 0 or n0 == 0:
        return None
    values = sorted([(v, 1) for v in positives] + [(v, 0) for v in negatives])
    rank_sum, i = 0.0, 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1][0] == values[i][0]:
            j += 1
        mid_rank = (i + j) / 2 + 1  # 1-based average rank of the tie block
        rank_sum += mid_rank * sum(1 for k in range(i, j + 1) if values[k][1] == 1)
        i = j + 1
    return (rank_sum - n1 * (n1 + 1) / 2) / (n1 * n0)


def auc_ci(a: float | None, n_pos: int, n_neg: int, z: float = Z95) -> tuple[float, float] | None:
    """Hanley & McNeil (1982) normal interval for an AUC, clipped to [0, 1]."""
    if a is None or n_pos == 0 or n_neg == 0:
        return None
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)
    half = z * math.sqrt(max(var, 0.0))
    return (max(0.0, a - half), min(1.0, a + half))
