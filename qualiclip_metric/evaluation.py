"""Correlation metrics and the one evaluation protocol of the project.

SRCC, KRCC and PLCC, PLCC and RMSE after the standard 4-parameter logistic mapping, bootstrap confidence
intervals, and the random-split protocol (median over splits) used by the QualiCLIP and ARNIQA authors.
:class:`Protocol` says how a dataset is split; :func:`dataset_splits` splits it (by content where the
dataset names one, so that no reference image is on both sides); :func:`evaluate_predictions` (a
zero-shot metric's scores) and :func:`evaluate_regression` (features and a fit function, as for Re-IQA)
return the report that ``qualiclip evaluate``, the baselines and ``hub.verify`` all print.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from qualiclip_metric.datasets import IQADataset

METRICS = ("srcc", "krcc", "plcc", "plcc_logistic", "rmse_logistic")
#: ARNIQA's split files: one row of dataset indices per split, padded with -1.
SPLIT_FILES = ("train.npy", "test.npy")


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


@dataclass(frozen=True)
class Protocol:
    """How a dataset is split for evaluation: the same for a zero-shot metric, a regressor and a fine-tuned baseline.

    Args:
        splits: number of random splits; the reported figure is the median over their test parts.
        test_fraction: share of the images (or of the contents, when the dataset names them) in each test part;
            1 makes every test part the whole set (only meaningful for a metric that is not fitted).
        seed: seed of the splits and of the bootstrap.
        bootstrap: bootstrap resamples of the whole-set correlations; 0 disables the intervals.
        confidence: confidence level of the bootstrap intervals.
        split_files: a folder with ARNIQA's ``train.npy`` and ``test.npy`` (one row of dataset indices per
            split, padded with -1); when given, the splits are read from it instead of drawn.

    Example:
        >>> Protocol(splits=10, test_fraction=0.2).splits
        10
    """

    splits: int = 10
    test_fraction: float = 0.2
    seed: int = 0
    bootstrap: int = 1000
    confidence: float = 0.95
    split_files: str | None = None

    def __post_init__(self) -> None:
        from qualiclip_metric.inputs import validate_positive_int

        validate_positive_int(self.splits, "splits")
        if not 0 < self.test_fraction <= 1:
            raise ValueError(f"Argument `test_fraction` must be in (0, 1], but got {self.test_fraction!r}")
        if isinstance(self.bootstrap, bool) or not isinstance(self.bootstrap, int) or self.bootstrap < 0:
            raise ValueError(f"Argument `bootstrap` must be a non-negative integer, but got {self.bootstrap!r}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"Argument `confidence` must be in (0, 1), but got {self.confidence!r}")
        if self.split_files is not None:
            object.__setattr__(self, "split_files", os.fspath(self.split_files))


@dataclass(frozen=True)
class Split:
    """Indices into the dataset of one split's training and test parts."""

    train: np.ndarray
    test: np.ndarray


def _read_split_files(folder: Path, count: int) -> list[Split]:
    """ARNIQA's ``train.npy`` and ``test.npy``: row ``k`` holds split ``k``'s indices, padded with -1."""
    rows = {}
    for name in SPLIT_FILES:
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"{folder}: no {name} (split files hold train.npy and test.npy)")
        table = np.load(path, allow_pickle=False)
        if table.ndim != 2 or not np.issubdtype(table.dtype, np.integer):
            raise ValueError(f"{path}: need a 2-d integer array (splits x indices), got {table.dtype} {table.shape}")
        if table.size and (table.max() >= count or table.min() < -1):
            raise ValueError(f"{path}: indices must be in 0..{count - 1} (or -1 for padding) for {count} images")
        rows[name] = [np.sort(row[row >= 0]) for row in table]
    if len(rows["train.npy"]) != len(rows["test.npy"]):
        raise ValueError(f"{folder}: train.npy and test.npy hold different numbers of splits")
    splits = []
    for index, (train, test) in enumerate(zip(rows["train.npy"], rows["test.npy"], strict=True)):
        if np.intersect1d(train, test).size:
            raise ValueError(f"{folder}: split {index} has images in both its training and test parts")
        splits.append(Split(train, test))
    return splits


def dataset_splits(dataset: IQADataset, protocol: Protocol | None = None) -> list[Split]:
    """The protocol's splits of ``dataset``: read from split files, or random, and by content where it names one.

    Splits depend only on the dataset and the protocol, not on which images could be scored, so every
    method evaluated on a dataset meets the same test parts.

    Raises:
        ValueError: split files that do not fit the dataset.
        FileNotFoundError: a split-file folder without ``train.npy`` or ``test.npy``.
    """
    protocol = protocol or Protocol()
    count = len(dataset)
    if protocol.split_files is not None:
        return _read_split_files(Path(protocol.split_files), count)
    everything = np.arange(count)
    return [
        Split(np.setdiff1d(everything, test), test)
        for test in random_splits(
            count,
            splits=protocol.splits,
            test_fraction=protocol.test_fraction,
            seed=protocol.seed,
            groups=dataset.groups,
        )
    ]


def median_over_splits(per_split: Sequence[Mapping[str, Any]], names: Sequence[str] = METRICS) -> dict[str, float]:
    """The reported figure: the median of each metric over the splits (those that have it)."""
    return {
        name: float(np.median([row[name] for row in per_split if name in row]))
        for name in names
        if any(name in row for row in per_split)
    }


def _protocol_record(dataset: IQADataset, protocol: Protocol) -> dict[str, Any]:
    return {
        **dataclasses.asdict(protocol),
        "by_content": protocol.split_files is None and dataset.groups is not None,
        "source": "split files" if protocol.split_files is not None else "random",
    }


def _oriented_metrics(predicted: np.ndarray, target: np.ndarray, dataset: IQADataset) -> dict[str, float]:
    return correlations(predicted, target, target_higher_is_better=dataset.higher_is_better)


def _aligned(values: Sequence[float] | np.ndarray, dataset: IQADataset, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.shape[0] != len(dataset):
        raise ValueError(f"Argument `{what}` must have one row per image ({len(dataset)}), but has {array.shape[0]}")
    return array


def evaluate_predictions(
    dataset: IQADataset,
    predictions: Sequence[float] | np.ndarray,
    protocol: Protocol | None = None,
    *,
    errors: Mapping[int, str] | None = None,
) -> dict[str, Any]:
    """The evaluation report of a metric's scores: the whole set, bootstrap intervals and the split median.

    Args:
        dataset: the images, their subjective scores (MOS or DMOS, oriented by ``dataset.higher_is_better``)
            and their contents.
        predictions: one score per image of ``dataset``, in its order; NaN for an image that was not scored.
        protocol: splits, seed and bootstrap (default :class:`Protocol`).
        errors: why images were not scored, by row; listed in the report.

    A split whose test part has fewer than 3 scored images is recorded as skipped and left out of the median.

    Raises:
        ValueError: fewer than 3 scored images, or no split with 3 of them in its test part.

    Example:
        >>> report = evaluate_predictions(dataset, scores)  # doctest: +SKIP
        >>> print(report_table(report))  # doctest: +SKIP
    """
    protocol = protocol or Protocol()
    predicted = _aligned(predictions, dataset, "predictions")
    errors = dict(errors or {})
    for row in np.flatnonzero(~np.isfinite(predicted)):
        errors.setdefault(int(row), "not scored")
    scored = np.isfinite(predicted)
    if scored.sum() < 3:
        raise ValueError(f"only {int(scored.sum())} of {len(dataset)} images are scored; need at least 3")
    target = dataset.scores
    per_split = []
    for split in dataset_splits(dataset, protocol):
        test = split.test[scored[split.test]]
        if test.size < 3:
            per_split.append({"test": int(test.size), "skipped": "fewer than 3 scored images in the test part"})
            continue
        per_split.append({**_oriented_metrics(predicted[test], target[test], dataset), "test": int(test.size)})
    keep = np.flatnonzero(scored)
    report = _report_head(dataset, protocol, keep, errors)
    report["all_images"] = _oriented_metrics(predicted[keep], target[keep], dataset)
    if protocol.bootstrap:
        report["bootstrap"] = {
            "samples": protocol.bootstrap,
            "confidence": protocol.confidence,
            "intervals": bootstrap_intervals(
                predicted[keep],
                target[keep],
                samples=protocol.bootstrap,
                confidence=protocol.confidence,
                seed=protocol.seed,
                target_higher_is_better=dataset.higher_is_better,
            ),
        }
    report["splits"] = _splits_record(protocol, per_split)
    report["scores"] = [
        {"path": str(dataset.paths[row]), "score": float(predicted[row]), "mos": float(target[row])} for row in keep
    ]
    return report


class Regressor(typing.Protocol):
    """A fitted model mapping features to scores (scikit-learn's estimators are ones)."""

    def predict(self, features: np.ndarray) -> np.ndarray: ...


#: ``fit(features, target, groups)``: a regressor fitted on a training part; ``groups`` (the contents of its
#: images, or None) lets its own cross-validation keep a content on one side too.
FitFunction = Callable[[np.ndarray, np.ndarray, "np.ndarray | None"], Regressor]


def evaluate_regression(
    dataset: IQADataset,
    features: np.ndarray,
    fit: FitFunction,
    protocol: Protocol | None = None,
    *,
    errors: Mapping[int, str] | None = None,
) -> dict[str, Any]:
    """The evaluation report of features mapped to scores by a model fitted on each split's training part.

    Args:
        dataset: the images, their subjective scores and their contents.
        features: one row per image of ``dataset``; a row with a NaN is an image that could not be read.
        fit: fits a regressor on a training part (see :data:`FitFunction`); it sees the raw subjective scores.
            A regressor with a ``describe()`` method adds what it returns (a chosen ridge strength, say)
            to its split's record.
        protocol: splits and seed (default :class:`Protocol`; there is no whole-set figure to bootstrap).
        errors: why images have no features, by row; listed in the report.

    A split with fewer than 2 usable training or 4 usable test images (the logistic PLCC fit has 4
    parameters) is recorded as skipped and left out of the median.

    Raises:
        ValueError: no split has enough usable images.
    """
    protocol = protocol or Protocol()
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"Argument `features` must be a 2-d array (images x features), but has shape {x.shape}")
    _aligned(x, dataset, "features")
    errors = dict(errors or {})
    usable = np.isfinite(x).all(axis=1)
    for row in np.flatnonzero(~usable):
        errors.setdefault(int(row), "no features")
    groups = np.asarray(dataset.groups) if dataset.groups is not None else None
    target = dataset.scores
    per_split = []
    for split in dataset_splits(dataset, protocol):
        train, test = split.train[usable[split.train]], split.test[usable[split.test]]
        if train.size < 2 or test.size < 4:
            reason = "fewer than 2 usable training or 4 usable test images"
            per_split.append({"train": int(train.size), "test": int(test.size), "skipped": reason})
            continue
        model = fit(x[train], target[train], groups[train] if groups is not None else None)
        predicted = np.asarray(model.predict(x[test]), dtype=np.float64).reshape(-1)
        record = _oriented_metrics(predicted, target[test], dataset)
        record.update(train=int(train.size), test=int(test.size))
        describe = getattr(model, "describe", None)
        per_split.append({**record, **(describe() if callable(describe) else {})})
    report = _report_head(dataset, protocol, np.flatnonzero(usable), errors)
    report["splits"] = _splits_record(protocol, per_split)
    return report


def _report_head(dataset: IQADataset, protocol: Protocol, keep: np.ndarray, errors: Mapping[int, str]) -> dict:
    return {
        "dataset": dataset.name,
        "images": len(dataset),
        "scored": int(keep.size),
        "scores_higher_is_better": bool(dataset.higher_is_better),
        "protocol": _protocol_record(dataset, protocol),
        "failed": [
            {"path": str(dataset.paths[row]), "mos": float(dataset.scores[row]), "error": message}
            for row, message in sorted(errors.items())
        ],
    }


def _splits_record(protocol: Protocol, per_split: list[dict[str, Any]]) -> dict[str, Any]:
    """The per-split records and their median; a split too small to measure is kept, marked ``skipped``."""
    skipped = sum("skipped" in row for row in per_split)
    if skipped == len(per_split):
        raise ValueError(f"none of the {len(per_split)} splits has enough usable images: {per_split[0]['skipped']}")
    return {
        "splits": len(per_split),
        "test_fraction": protocol.test_fraction,
        "seed": protocol.seed,
        "median": median_over_splits(per_split),
        "skipped": skipped,
        "per_split": per_split,
    }


def read_predictions(path: str | os.PathLike, dataset: IQADataset) -> tuple[np.ndarray, dict[int, str]]:
    """Scores from a score file (CSV, JSON lines or JSON, as ``qualiclip score`` writes it), in the dataset's order.

    The file is read by :func:`qualiclip_metric.score_writer.read_scores` and joined with the dataset by
    :func:`predictions_from_rows`. Returns one score per image (NaN where there is none) and the reason
    for each missing one.

    Raises:
        ValueError: a file without the ``path`` and ``score`` columns.
    """
    from qualiclip_metric.score_writer import read_scores

    return predictions_from_rows(read_scores(path).rows, dataset, source=str(path))


def match_rows(rows: Sequence[Mapping[str, Any]], dataset: IQADataset) -> list[int | None]:
    """For each image of ``dataset``, the index of its row in ``rows`` (None when there is none).

    Rows are matched by full path, or else by file name when exactly one row has that name (scores
    written on another machine, or from another folder).
    """
    by_path = {str(Path(row["path"])): index for index, row in enumerate(rows)}
    by_name: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        by_name.setdefault(Path(row["path"]).name, []).append(index)
    matches: list[int | None] = []
    for image in dataset.paths:
        index = by_path.get(str(image))
        if index is None and len(by_name.get(image.name, [])) == 1:
            index = by_name[image.name][0]
        matches.append(index)
    return matches


def predictions_from_rows(
    rows: Sequence[Mapping[str, Any]], dataset: IQADataset, *, source: str = "the scores"
) -> tuple[np.ndarray, dict[int, str]]:
    """Score rows (``path``, ``score``, ``error``, as ``read_scores`` gives them) in the dataset's order.

    Rows are matched by :func:`match_rows`. Returns one score per image (NaN where there is none) and the
    reason for each missing one.
    """
    predictions = np.full(len(dataset), np.nan)
    errors: dict[int, str] = {}
    for row, index in enumerate(match_rows(rows, dataset)):
        if index is None:
            errors[row] = f"no prediction in {source}"
            continue
        entry = rows[index]
        if entry.get("error") or entry.get("score") is None:
            errors[row] = entry.get("error") or "empty score"
            continue
        score = float(entry["score"])
        if math.isfinite(score):
            predictions[row] = score
        else:
            errors[row] = f"score {entry['score']!r} is not a finite number"
    return predictions, errors


def report_table(report: Mapping[str, Any]) -> str:
    """The report as the table ``qualiclip evaluate`` prints: whole set, bootstrap interval, split median."""
    splits = report["splits"]
    intervals = report.get("bootstrap", {}).get("intervals", {})
    percent = f"{report['bootstrap']['confidence']:.0%}" if "bootstrap" in report else ""
    content = " by content" if report["protocol"]["by_content"] else ""
    lines = [
        f"{report['dataset']}: {report['scored']} of {report['images']} images"
        + (" (DMOS)" if not report["scores_higher_is_better"] else "")
    ]
    header = f"split median ({splits['splits']} x {splits['test_fraction']:g}{content})"
    whole = report.get("all_images")
    if whole is None:
        lines.append(f"{'metric':<15} {header:>30}")
        lines += [f"{name:<15} {value:>30.4f}" for name, value in splits["median"].items()]
        return "\n".join(lines)
    lines.append(f"{'metric':<15} {'all images':>11} {percent + ' bootstrap':>17} {header:>30}")
    for name, value in whole.items():
        interval = f"[{intervals[name][0]:.3f}, {intervals[name][1]:.3f}]" if name in intervals else ""
        lines.append(f"{name:<15} {value:>11.4f} {interval:>17} {splits['median'][name]:>30.4f}")
    return "\n".join(lines)
