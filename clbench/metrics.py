"""Metrics as pure functions of predictions and of the accuracy matrix.

``R[t][u]`` is the accuracy on experience ``u``'s test images after training experience ``t`` (defined
for ``u <= t``; entries above the diagonal are ignored). Definitions follow Chaudhry et al. 2018
(forgetting) and Lopez-Paz & Ranzato 2017 (backward transfer), as FACIL computes them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def accuracy(pred: Sequence[int], target: Sequence[int]) -> float:
    if len(pred) != len(target):
        raise ValueError(f"{len(pred)} predictions for {len(target)} targets")
    if not target:
        raise ValueError("accuracy of an empty set")
    return sum(int(p == t) for p, t in zip(pred, target, strict=True)) / len(target)


def forgetting(R: Sequence[Sequence[float]]) -> float | None:
    """Mean over experiences u < T-1 of (best accuracy on u before the end) - (accuracy on u at the end)."""
    T = len(R)
    if T < 2:
        return None
    drops = [max(R[t][u] for t in range(u, T - 1)) - R[T - 1][u] for u in range(T - 1)]
    return sum(drops) / len(drops)


def bwt(R: Sequence[Sequence[float]]) -> float | None:
    """Backward transfer: mean over u < T-1 of R[T-1][u] - R[u][u] (negative = forgetting)."""
    T = len(R)
    if T < 2:
        return None
    return sum(R[T - 1][u] - R[u][u] for u in range(T - 1)) / (T - 1)


def mean_std_ci(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean, sample standard deviation and the half-width of the 95% t confidence interval of the mean.

    With one value the spread is unknown: std and half-width are NaN, never a misleading 0.
    """
    n = len(values)
    if n == 0:
        raise ValueError("no values to aggregate")
    m = sum(values) / n
    if n == 1:
        return m, math.nan, math.nan
    from scipy.stats import t

    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    return m, sd, float(t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
