"""Every reported figure is a median with its spread and repetition count; ratios divide medians."""

from __future__ import annotations

import statistics


def summarize(values, unit: str) -> dict:
    """Median, quartiles, min/max and count of repeated measurements."""
    values = sorted(float(v) for v in values)
    if not values:
        raise ValueError("no measurements to summarize")
    if len(values) >= 2:
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    else:
        q1 = q3 = values[0]
    return {
        "median": statistics.median(values),
        "q1": q1,
        "q3": q3,
        "min": values[0],
        "max": values[-1],
        "n": len(values),
        "unit": unit,
    }


def ratio(numerator: dict, denominator: dict, name: str, meaning: str) -> dict:
    """A ratio of two medians measured in the same run."""
    return {
        "name": name,
        "value": numerator["median"] / denominator["median"],
        "numerator_median": numerator["median"],
        "denominator_median": denominator["median"],
        "meaning": meaning,
    }


def is_figure(value) -> bool:
    return isinstance(value, dict) and {"median", "min", "max", "n"} <= set(value)


def _num(value: float, digits: int) -> str:
    return f"{value:.0f}" if abs(value) >= 10 ** (digits - 1) else f"{value:.{digits}g}"


def fmt(stat: dict | None, digits: int = 3) -> str:
    """``median [min-max] (n)`` for Markdown tables."""
    if stat is None:
        return "n/a"
    m, lo, hi = (_num(stat[k], digits) for k in ("median", "min", "max"))
    return f"{m} [{lo}-{hi}] (n={stat['n']})"
