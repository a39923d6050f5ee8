"""Percentile bootstrap confidence intervals, deterministic for a given seed.

``bootstrap_ci`` resamples per-image values (CLIP score, DINO, CLIP-I, CLIP-T). ``bootstrap_set_ci``
resamples the generated images of a set-level metric (FID, KID, IS) and recomputes it through a callable
that takes the resampled indices; the real images stay fixed. Set-level metrics are biased by
duplicated images (a resample holds ~63% distinct images), so their interval need not contain the
full-set value: read it as the spread due to which images were generated, not as an unbiased interval.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np

log = logging.getLogger(__name__)


def _percentiles(stats: np.ndarray, confidence: float) -> tuple[float, float]:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return math.nan, math.nan
    alpha = (1 - confidence) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return float(low), float(high)


def bootstrap_ci(
    values,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    statistic: Callable[[np.ndarray], float] = np.mean,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over the samples in ``values`` -> (low, high).

    Empty input gives (nan, nan); a single value gives (value, value).
    """
    values = np.asarray(values, dtype=float).ravel()
    if values.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, values.size, size=(n_boot, values.size))
    stats = np.array([statistic(values[row]) for row in idx], dtype=float)
    return _percentiles(stats, confidence)


def bootstrap_set_ci(
    metric_of_indices: Callable[[np.ndarray], float],
    n: int,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of a set-level metric over resamples (with replacement) of its n samples.

    ``metric_of_indices(idx)`` recomputes the metric on the samples ``idx`` (an int array of length n).
    Resamples on which it fails numerically (ValueError, RuntimeError, or a non-finite value) are dropped.
    """
    if n < 1:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    stats = np.full(n_boot, math.nan)
    for b in range(n_boot):
        idx = rng.integers(0, n, size=n)
        try:
            stats[b] = metric_of_indices(idx)
        except (ValueError, RuntimeError) as exc:
            log.debug("bootstrap resample %d failed: %s", b, exc)
    failed = int(np.sum(~np.isfinite(stats)))
    if failed:
        log.warning("bootstrap: %d of %d resamples gave no finite value and were dropped", failed, n_boot)
    return _percentiles(stats, confidence)
