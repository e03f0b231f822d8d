"""Statistics for eval metrics: bootstrap intervals of means, ROC AUC from two score samples."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 2000


def mean_ci(values: Sequence[float], seed: int = 0) -> dict[str, float]:
    """Mean with a 95% percentile-bootstrap interval: {"value", "ci_low", "ci_high", "n"}."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return {"value": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": 0}
    low, high = bootstrap(lambda idx: float(x[idx].mean()), x.size, seed=seed)
    return {"value": float(x.mean()), "ci_low": low, "ci_high": high, "n": int(x.size)}


def bootstrap(stat: Callable[[np.ndarray], float], n: int, seed: int = 0,
              resamples: int = RESAMPLES) -> tuple[float, float]:
    """Percentile interval of `stat(indices)` over `resamples` resamplings of range(n) with replacement."""
    rng = np.random.default_rng(seed)
    stats = np.array([stat(rng.integers(0, n, n)) for _ in range(resamples)])
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - CONFIDENCE) / 2
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))


def auc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """ROC AUC = P(score of a positive > score of a negative), ties counted half (Mann-Whitney U)."""
    from scipy.stats import mannwhitneyu  # scipy: rank statistics without sklearn

    pos, neg = np.asarray(positive, dtype=float), np.asarray(negative, dtype=float)
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    u = mannwhitneyu(pos, neg, alternative="two-sided").statistic
    return float(u / (pos.size * neg.size))
