"""The linear map from Re-IQA features to MOS: ridge regression with cross-validated regularisation.

Features are standardised with the training part's mean and standard deviation, the intercept is the
training mean of the target, and the ridge strength is chosen from a log grid by k-fold cross-validation
(mean squared error) on the training part only. One SVD per fold serves every candidate strength.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qualiclip_metric.evaluation import correlations, random_splits

DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(-3, 6, 19))


def _ridge_solutions(x: np.ndarray, y: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """Weights (len(alphas), D) minimising ||x w - y||^2 + alpha ||w||^2 for centred ``x``, ``y``.

    With fewer samples than features (8192-d features, hundreds of images) the dual form
    ``w = x^T (x x^T + alpha I)^-1 y`` needs only the eigen-decomposition of the N x N Gram matrix.
    """
    if x.shape[0] < x.shape[1]:
        eigenvalues, vectors = np.linalg.eigh(x @ x.T)
        eigenvalues = np.clip(eigenvalues, 0, None)
        coefficients = (vectors.T @ y)[None, :] / (eigenvalues[None, :] + alphas[:, None])
        return (coefficients @ vectors.T) @ x
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    projected = u.T @ y
    shrink = s[None, :] / (s[None, :] ** 2 + alphas[:, None])
    return (shrink * projected[None, :]) @ vt


@dataclass
class RidgeRegressor:
    """A fitted ridge model; ``predict`` maps raw (unstandardised) features to scores."""

    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    folds: int = 5
    seed: int = 0
    alpha: float | None = None
    mean: np.ndarray | None = None
    scale: np.ndarray | None = None
    weights: np.ndarray | None = None
    intercept: float = 0.0
    cv_errors: list[float] = field(default_factory=list)

    def _standardise(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.scale

    def fit(self, features: np.ndarray, target: np.ndarray) -> RidgeRegressor:
        x, y = np.asarray(features, dtype=np.float64), np.asarray(target, dtype=np.float64).reshape(-1)
        if x.ndim != 2 or x.shape[0] != y.shape[0]:
            raise ValueError(f"features {x.shape} and target {y.shape} do not match")
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise ValueError("features and target must be finite")
        folds = min(self.folds, x.shape[0])
        if folds < 2:
            raise ValueError("need at least 2 samples for cross-validation")
        alphas = np.asarray(self.alphas, dtype=np.float64)
        order = np.random.default_rng(self.seed).permutation(x.shape[0])
        errors = np.zeros(len(alphas))
        for held in np.array_split(order, folds):
            train = np.setdiff1d(order, held)
            mean, scale = x[train].mean(0), x[train].std(0)
            scale[scale == 0] = 1.0
            xt, yt = (x[train] - mean) / scale, y[train] - y[train].mean()
            solutions = _ridge_solutions(xt, yt, alphas)
            predicted = ((x[held] - mean) / scale) @ solutions.T + y[train].mean()
            errors += ((predicted - y[held, None]) ** 2).sum(0)
        self.cv_errors = (errors / x.shape[0]).tolist()
        self.alpha = float(alphas[int(np.argmin(errors))])
        self.mean, self.scale = x.mean(0), x.std(0)
        self.scale[self.scale == 0] = 1.0
        self.intercept = float(y.mean())
        self.weights = _ridge_solutions(self._standardise(x), y - self.intercept, np.asarray([self.alpha]))[0]
        return self

    def predict(self, features: np.ndarray) -> np.ndarray:
        if self.weights is None:
            raise RuntimeError("the regressor is not fitted")
        return self._standardise(np.asarray(features, dtype=np.float64)) @ self.weights + self.intercept

    def save(self, directory: str | Path, metadata: dict[str, Any]) -> None:
        """``regressor.safetensors`` (weights, mean, scale) and ``regressor.json`` (alpha, intercept, metadata)."""
        from safetensors.numpy import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file(
            {"weights": self.weights, "mean": self.mean, "scale": self.scale}, str(directory / "regressor.safetensors")
        )
        record = {
            "alpha": self.alpha,
            "intercept": self.intercept,
            "alphas": list(self.alphas),
            "folds": self.folds,
            "cv_errors": self.cv_errors,
            **metadata,
        }
        (directory / "regressor.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, directory: str | Path) -> tuple[RidgeRegressor, dict[str, Any]]:
        from safetensors.numpy import load_file

        directory = Path(directory)
        for name in ("regressor.json", "regressor.safetensors"):
            if not (directory / name).is_file():
                raise FileNotFoundError(
                    f"{directory}: no {name} (write one with training.reiqa.evaluate --save-regressor)"
                )
        record = json.loads((directory / "regressor.json").read_text(encoding="utf-8"))
        arrays = load_file(str(directory / "regressor.safetensors"))
        model = cls(alphas=tuple(record["alphas"]), folds=record["folds"], alpha=record["alpha"])
        model.weights, model.mean, model.scale = arrays["weights"], arrays["mean"], arrays["scale"]
        model.intercept, model.cv_errors = float(record["intercept"]), list(record["cv_errors"])
        return model, record


def split_evaluation(
    features: np.ndarray,
    target: np.ndarray,
    *,
    splits: int = 10,
    test_fraction: float = 0.2,
    seed: int = 0,
    higher_is_better: bool = True,
    alphas: tuple[float, ...] = DEFAULT_ALPHAS,
    folds: int = 5,
) -> dict[str, Any]:
    """Fit on each split's training part, predict its test part; per-split metrics and their median.

    The splits are :func:`qualiclip_metric.evaluation.random_splits` (test indices); each training part is
    the rest. Metrics are :func:`qualiclip_metric.evaluation.correlations` on the test part.
    """
    x, y = np.asarray(features, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if round(len(y) * test_fraction) < 4:
        raise ValueError(f"{len(y)} images give test parts under 4 images, too few for the logistic PLCC fit")
    per_split: list[dict[str, Any]] = []
    for index in random_splits(len(y), splits=splits, test_fraction=test_fraction, seed=seed):
        train = np.setdiff1d(np.arange(len(y)), index)
        model = RidgeRegressor(alphas=alphas, folds=folds, seed=seed).fit(x[train], y[train])
        metrics = correlations(model.predict(x[index]), y[index], target_higher_is_better=higher_is_better)
        per_split.append({**metrics, "alpha": model.alpha, "train": int(train.size), "test": int(index.size)})
    names = [key for key in per_split[0] if key not in ("alpha", "train", "test")]
    median = {name: float(np.median([result[name] for result in per_split])) for name in names}
    return {"splits": splits, "test_fraction": test_fraction, "seed": seed, "median": median, "per_split": per_split}
