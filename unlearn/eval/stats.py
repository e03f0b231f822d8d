"""Statistics for eval metrics: bootstrap intervals (means, token-weighted perplexity, AUC), ROC AUC."""

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


def auc_ci(positive: Sequence[float], negative: Sequence[float], seed: int = 0) -> dict[str, float]:
    """AUC with a 95% percentile-bootstrap interval, each class resampled within itself."""
    pos, neg = np.asarray(positive, dtype=float), np.asarray(negative, dtype=float)
    value = auc(pos, neg)
    if not np.isfinite(value):
        return {"value": value, "ci_low": float("nan"), "ci_high": float("nan"), "n": int(pos.size + neg.size)}
    rng = np.random.default_rng(seed)
    stats = np.array([auc(pos[rng.integers(0, pos.size, pos.size)], neg[rng.integers(0, neg.size, neg.size)])
                      for _ in range(RESAMPLES)])
    alpha = (1.0 - CONFIDENCE) / 2
    return {"value": value, "ci_low": float(np.quantile(stats, alpha)), "ci_high": float(np.quantile(stats, 1 - alpha)),
            "n": int(pos.size + neg.size)}


def perplexity_ci(nll_sums: Sequence[float], token_counts: Sequence[int], seed: int = 0) -> dict[str, float]:
    """exp(token-weighted mean NLL) with a 95% interval from resampling whole samples (texts)."""
    sums, counts = np.asarray(nll_sums, dtype=float), np.asarray(token_counts, dtype=float)
    if counts.sum() <= 0:
        return {"value": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": int(sums.size)}

    def ppl(idx: np.ndarray) -> float:
        return float(np.exp(min(sums[idx].sum() / max(counts[idx].sum(), 1.0), 50.0)))

    low, high = bootstrap(ppl, sums.size, seed=seed)
    return {"value": ppl(np.arange(sums.size)), "ci_low": low, "ci_high": high, "n": int(sums.size),
            "nll": float(sums.sum() / counts.sum())}
