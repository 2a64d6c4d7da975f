"""Means, 95 % t-intervals over seeds and paired differences: the statistics of the evaluation protocol.

A paired difference compares two arms on the same seed (same real subset, same initialisation, same
batch order), so the seed-to-seed spread of the subsets cancels; ``better`` / ``worse`` is said only when
its 95 % interval excludes 0. Values that cannot be paired (two runs of a protocol on different devices,
whose trainings differ seed by seed) are compared with Welch's unequal-variance interval (:func:`welch`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["T975", "interval", "paired", "paired_runs", "t_quantile", "verdict", "welch"]

T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179,
        13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086, 25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000}
"""Two-sided 95 % quantiles of Student's t by degrees of freedom."""


def t_quantile(df: int) -> float:
    """The two-sided 95 % t quantile for ``df >= 1`` degrees of freedom (between table keys: the next lower
    key, a slightly wider interval; above 60: 1.96)."""
    if df < 1:
        raise ValueError(f"`df` must be >= 1, got {df}")
    return 1.96 if df > max(T975) else T975[max(k for k in T975 if k <= df)]


def interval(values: Sequence[float]) -> dict:
    """Mean and two-sided 95 % t-interval of ``values`` (one per seed).

    Returns:
        ``{"mean", "low", "high", "half_width", "n"}``; a single value has half width 0.

    Raises:
        ValueError: ``values`` is empty or holds a non-finite number.
    """
    x = [float(v) for v in values]
    if not x or not all(math.isfinite(v) for v in x):
        raise ValueError(f"`values` must be finite numbers, at least one, got {x}")
    mean = sum(x) / len(x)
    if len(x) < 2:
        return {"mean": mean, "low": mean, "high": mean, "half_width": 0.0, "n": 1}
    sd = math.sqrt(_variance(x))
    half = t_quantile(len(x) - 1) * sd / math.sqrt(len(x))
    return {"mean": mean, "low": mean - half, "high": mean + half, "half_width": half, "n": len(x)}


def verdict(diff: dict) -> str:
    """``better`` / ``worse`` when the 95 % interval of a paired difference excludes 0, else ``not told apart``."""
    if diff["low"] > 0:
        return "better"
    if diff["high"] < 0:
        return "worse"
    return "not told apart"


def paired(values: Sequence[float], others: Sequence[float]) -> dict:
    """Paired difference ``values - others`` (same seeds, same order) with its interval and verdict.

    Raises:
        ValueError: The two lists differ in length.
    """
    if len(values) != len(others):
        raise ValueError(f"paired differences need one value per seed on both sides, got {len(values)} and {len(others)}")
    diffs = [a - b for a, b in zip(values, others)]
    d = interval(diffs)
    return {**d, "per_seed": diffs, "verdict": verdict(d)}


def paired_runs(runs: Sequence[dict], others: Sequence[dict], metric: str, index: int | None = None) -> dict:
    """:func:`paired` of ``metric`` between two arms' runs, checked to be the same seeds in the same order (each
    run's ``"seed"``), so that two lists of equal length but other seeds are never paired silently. ``index``
    reads one entry of a list-valued metric (e.g. ``"recall"``, one value per class).

    Raises:
        ValueError: The seeds differ (the message lists both), or a run lacks ``metric``.
    """
    seeds, other_seeds = [r.get("seed") for r in runs], [r.get("seed") for r in others]
    if seeds != other_seeds:
        raise ValueError(f"paired differences need the same seeds in the same order, got {seeds} and {other_seeds}")
    missing = sum(metric not in r for r in (*runs, *others))
    if missing:
        raise ValueError(f"paired differences of {metric!r}: {missing} run(s) lack it")
    if index is None:
        return paired([r[metric] for r in runs], [r[metric] for r in others])
    return paired([r[metric][index] for r in runs], [r[metric][index] for r in others])


def welch(values: Sequence[float], others: Sequence[float]) -> dict:
    """Unpaired difference of means ``mean(values) - mean(others)`` with Welch's 95 % interval.

    The standard error is ``sqrt(s1^2 / n1 + s2^2 / n2)``; the degrees of freedom are Welch-Satterthwaite's,
    rounded down (a slightly wider interval, as :func:`t_quantile` between its table keys).

    Returns:
        ``{"mean", "low", "high", "half_width", "n", "n_other", "df", "verdict"}``.

    Raises:
        ValueError: Fewer than two values on a side, a non-finite value, or no spread on either side.
    """
    a, b = interval(values), interval(others)
    if a["n"] < 2 or b["n"] < 2:
        raise ValueError(f"Welch's interval needs two or more values on each side, got {a['n']} and {b['n']}")
    va, vb = _variance(values) / a["n"], _variance(others) / b["n"]  # squared standard errors of the two means
    if va + vb == 0:
        raise ValueError("Welch's interval needs some spread: both sides are constant")
    df = (va + vb) ** 2 / (va ** 2 / (a["n"] - 1) + vb ** 2 / (b["n"] - 1))
    mean = a["mean"] - b["mean"]
    half = t_quantile(max(1, math.floor(df))) * math.sqrt(va + vb)
    d = {"mean": mean, "low": mean - half, "high": mean + half, "half_width": half, "n": a["n"], "n_other": b["n"], "df": df}
    return {**d, "verdict": verdict(d)}


def _variance(values: Sequence[float]) -> float:
    """Sample variance (n - 1 in the denominator) of two or more values."""
    x = [float(v) for v in values]
    mean = sum(x) / len(x)
    return sum((v - mean) ** 2 for v in x) / (len(x) - 1)
