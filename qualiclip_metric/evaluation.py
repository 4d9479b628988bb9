"""Correlation metrics and protocols for image quality assessment.

SRCC, KRCC and PLCC, PLCC and RMSE after the standard 4-parameter logistic mapping, bootstrap confidence
intervals, and the random-split protocol (median over splits) used by the QualiCLIP and ARNIQA authors.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

METRICS = ("srcc", "krcc", "plcc", "plcc_logistic", "rmse_logistic")


def check_scores(scores: Sequence[float], what: str = "scores") -> np.ndarray:
    """Scores as a float64 vector that correlations are defined for: finite, and not all equal."""
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise ValueError(f"{what}: {bad.size} of {values.size} are not finite numbers (first at position {bad[0]})")
    if values.size and np.ptp(values) == 0:
        raise ValueError(f"{what}: all {values.size} are equal ({values[0]:g}); correlations are undefined")
    return values


def _arrays(predicted: Sequence[float], target: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(predicted, dtype=np.float64).reshape(-1), np.asarray(target, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"predicted and target differ in length: {x.size} and {y.size}")
    if x.size < 3:
        raise ValueError(f"need at least 3 scores, got {x.size}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("scores must be finite")
    return x, y


def _correlation_functions() -> dict[str, object]:
    """SRCC, KRCC and PLCC as functions of (predicted, target)."""
    from scipy import stats

    return {
        "srcc": lambda a, b: float(stats.spearmanr(a, b).statistic),
        "krcc": lambda a, b: float(stats.kendalltau(a, b).statistic),
        "plcc": lambda a, b: float(stats.pearsonr(a, b).statistic),
    }


def logistic4(x: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """VQEG's 4-parameter logistic: from ``b2`` (low predictions) to ``b1`` (high), centre ``b3``, slope ``b4``."""
    with np.errstate(over="ignore"):  # a steep fit saturates exp to inf, which gives the right limit b2
        return (b1 - b2) / (1.0 + np.exp(-(x - b3) / np.abs(b4))) + b2


def fit_logistic(predicted: Sequence[float], target: Sequence[float]) -> np.ndarray:
    """Least-squares parameters of :func:`logistic4` mapping predictions onto the target scale."""
    from scipy.optimize import curve_fit

    x, y = _arrays(predicted, target)
    start = [y.max(), y.min(), float(np.median(x)), float(x.std()) or 1.0]
    if x.size <= len(start):  # no more points than parameters: nothing to fit, keep the starting curve
        return np.asarray(start, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            params, _ = curve_fit(logistic4, x, y, p0=start, maxfev=20000)
        except RuntimeError:  # no convergence: fall back to the starting curve, reported as such by its RMSE
            params = np.asarray(start)
    return np.asarray(params, dtype=np.float64)


def correlations(
    predicted: Sequence[float], target: Sequence[float], *, target_higher_is_better: bool = True
) -> dict[str, float]:
    """SRCC, KRCC, PLCC, and PLCC and RMSE after the logistic mapping.

    For DMOS targets (``target_higher_is_better=False``) the target is negated first, so that a metric
    that agrees with the viewers has positive correlations. RMSE is in the units of the target.
    """
    x, y = _arrays(predicted, target)
    y_oriented = y if target_higher_is_better else -y
    mapped = logistic4(x, *fit_logistic(x, y_oriented))
    functions = _correlation_functions()
    result = {name: function(x, y_oriented) for name, function in functions.items()}
    result["plcc_logistic"] = functions["plcc"](mapped, y_oriented)
    result["rmse_logistic"] = float(np.sqrt(np.mean((mapped - y_oriented) ** 2)))
    return result


def bootstrap_intervals(
    predicted: Sequence[float],
    target: Sequence[float],
    *,
    samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    target_higher_is_better: bool = True,
    metrics: Sequence[str] = ("srcc", "krcc", "plcc"),
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap confidence intervals (images resampled with replacement)."""
    x, y = _arrays(predicted, target)
    y = y if target_higher_is_better else -y
    functions = _correlation_functions()
    unknown = set(metrics) - set(functions)
    if unknown:
        raise ValueError(f"bootstrap supports {sorted(functions)}, not {sorted(unknown)}")
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {name: [] for name in metrics}
    for _ in range(samples):
        index = rng.integers(0, x.size, x.size)
        if np.ptp(x[index]) == 0 or np.ptp(y[index]) == 0:
            continue  # a resample without spread has no correlation
        for name in metrics:
            values[name].append(functions[name](x[index], y[index]))
    tail = (1.0 - confidence) / 2 * 100
    return {name: (float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))) for name, v in values.items()}


def random_splits(
    count: int, *, splits: int = 10, test_fraction: float = 0.2, seed: int = 0, groups: Sequence[str] | None = None
) -> list[np.ndarray]:
    """Test indices of each random split; with ``groups``, all images of a content fall on one side."""
    if not 0 < test_fraction <= 1:
        raise ValueError(f"test_fraction must be in (0, 1], got {test_fraction}")
    rng = np.random.default_rng(seed)
    if groups is None:
        size = max(3, round(count * test_fraction))
        return [np.sort(rng.permutation(count)[:size]) for _ in range(splits)]
    labels = np.asarray(list(groups))
    unique = np.unique(labels)
    size = max(1, round(len(unique) * test_fraction))
    return [np.flatnonzero(np.isin(labels, rng.permutation(unique)[:size])) for _ in range(splits)]


def split_protocol(
    predicted: Sequence[float],
    target: Sequence[float],
    *,
    splits: int = 10,
    test_fraction: float = 0.2,
    seed: int = 0,
    groups: Sequence[str] | None = None,
    target_higher_is_better: bool = True,
) -> dict[str, object]:
    """Metrics on the test part of ``splits`` random splits, and their median (the reported figure)."""
    x, y = _arrays(predicted, target)
    per_split = [
        correlations(x[index], y[index], target_higher_is_better=target_higher_is_better)
        for index in random_splits(x.size, splits=splits, test_fraction=test_fraction, seed=seed, groups=groups)
    ]
    median = {name: float(np.median([result[name] for result in per_split])) for name in METRICS}
    return {"splits": splits, "test_fraction": test_fraction, "seed": seed, "median": median, "per_split": per_split}
