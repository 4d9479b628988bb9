"""The linear map from Re-IQA features to MOS: ridge regression with cross-validated regularisation.

Features are standardised with the training part's mean and standard deviation, the intercept is the
training mean of the target, and the ridge strength is chosen from a log grid by k-fold cross-validation
(mean squared error) on the training part only; the folds are scikit-learn's, of whole contents
(``GroupKFold``) where the dataset names them. The solver is written here because one eigen-decomposition
per fold serves every candidate strength: on 480 images x 2048 features the fit takes 0.25 s, against
5.0 s for ``RidgeCV`` with the same folds and 7.8 s for ``GridSearchCV`` over a scaler-and-ridge pipeline
(one refit per strength and fold), and the gap grows with the feature size (8192 for ResNet-50).
``RidgeCV``'s fast path is leave-one-out, which lets the distorted versions of one content vote for each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qualiclip_metric.datasets import IQADataset
from qualiclip_metric.evaluation import Protocol, evaluate_regression

DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(-3, 6, 19))


def _moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation per feature; a constant feature keeps scale 1."""
    mean, scale = x.mean(0), x.std(0)
    scale[scale == 0] = 1.0
    return mean, scale


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

    def fit(self, features: np.ndarray, target: np.ndarray, groups: np.ndarray | None = None) -> RidgeRegressor:
        """Choose the strength by cross-validation (folds of whole ``groups`` when given), then fit on everything."""
        from sklearn.model_selection import GroupKFold, KFold

        x, y = np.asarray(features, dtype=np.float64), np.asarray(target, dtype=np.float64).reshape(-1)
        if x.ndim != 2 or x.shape[0] != y.shape[0]:
            raise ValueError(f"features {x.shape} and target {y.shape} do not match")
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise ValueError("features and target must be finite")
        units = x.shape[0] if groups is None else len(np.unique(groups))
        folds = min(self.folds, units)
        if folds < 2:
            raise ValueError(f"need at least 2 {'samples' if groups is None else 'contents'} for cross-validation")
        splitter = GroupKFold(folds) if groups is not None else KFold(folds, shuffle=True, random_state=self.seed)
        alphas = np.asarray(self.alphas, dtype=np.float64)
        errors = np.zeros(len(alphas))
        for train, held in splitter.split(x, y, groups):
            mean, scale = _moments(x[train])
            xt, yt = (x[train] - mean) / scale, y[train] - y[train].mean()
            predicted = ((x[held] - mean) / scale) @ _ridge_solutions(xt, yt, alphas).T + y[train].mean()
            errors += ((predicted - y[held, None]) ** 2).sum(0)
        self.cv_errors = (errors / x.shape[0]).tolist()
        self.alpha = float(alphas[int(np.argmin(errors))])
        self.mean, self.scale = _moments(x)
        self.intercept = float(y.mean())
        self.weights = _ridge_solutions(self._standardise(x), y - self.intercept, np.asarray([self.alpha]))[0]
        return self

    def describe(self) -> dict[str, float | None]:
        """What a split's record shows of the fit: the ridge strength chosen."""
        return {"alpha": self.alpha}

    def predict(self, features: np.ndarray) -> np.ndarray:
        if self.weights is None:
            raise RuntimeError("the regressor is not fitted")
        return self._standardise(np.asarray(features, dtype=np.float64)) @ self.weights + self.intercept

    def save(self, directory: str | Path, metadata: dict[str, Any]) -> None:
        """``regressor.safetensors`` (weights, mean, scale) and ``regressor.json`` (alpha, intercept, metadata).

        The project's export layout (:func:`qualiclip_metric.checkpoint.write_tensor_layout`): the JSON
        records the sha256 of the tensors, and ``load`` checks it. The folder is replaced as a whole, so
        one holding other files is refused.
        """
        import torch

        from qualiclip_metric.checkpoint import write_tensor_layout

        directory = Path(directory)
        own = {"regressor.json", "regressor.safetensors"}
        if directory.is_dir() and any(path.name not in own for path in directory.iterdir()):
            raise FileExistsError(f"{directory} holds other files; the regressor needs a folder of its own")
        arrays = {"weights": self.weights, "mean": self.mean, "scale": self.scale}
        tensors = {name: torch.from_numpy(np.ascontiguousarray(array)) for name, array in arrays.items()}
        record = {
            "alpha": self.alpha,
            "intercept": self.intercept,
            "alphas": list(self.alphas),
            "folds": self.folds,
            "cv_errors": self.cv_errors,
            **metadata,
        }
        write_tensor_layout(
            directory, {"regressor.safetensors": tensors}, record, config_file="regressor.json", overwrite=True
        )

    @classmethod
    def load(cls, directory: str | Path) -> tuple[RidgeRegressor, dict[str, Any]]:
        """A saved regressor and its record, its tensors checked against the sha256 the record holds.

        Raises:
            FileNotFoundError: a file of the folder is missing.
            CheckpointError: the tensors are damaged, or the record names no hash for them.
        """
        from qualiclip_metric.checkpoint import read_tensor_layout

        directory = Path(directory)
        for name in ("regressor.json", "regressor.safetensors"):
            if not (directory / name).is_file():
                raise FileNotFoundError(
                    f"{directory}: no {name} (write one with training.reiqa.evaluate --save-regressor)"
                )
        tensors, record = read_tensor_layout(directory, ["regressor.safetensors"], config_file="regressor.json")
        arrays = {name: tensor.numpy() for name, tensor in tensors["regressor.safetensors"].items()}
        model = cls(alphas=tuple(record["alphas"]), folds=record["folds"], alpha=record["alpha"])
        model.weights, model.mean, model.scale = arrays["weights"], arrays["mean"], arrays["scale"]
        model.intercept, model.cv_errors = float(record["intercept"]), list(record["cv_errors"])
        return model, record


def split_evaluation(
    features: np.ndarray,
    target: np.ndarray,
    *,
    groups: list[str] | np.ndarray | None = None,
    splits: int = 10,
    test_fraction: float = 0.2,
    seed: int = 0,
    higher_is_better: bool = True,
    split_files: str | Path | None = None,
    alphas: tuple[float, ...] = DEFAULT_ALPHAS,
    folds: int = 5,
    dataset: IQADataset | None = None,
    errors: dict[int, str] | None = None,
) -> dict[str, Any]:
    """Re-IQA's figure: the ridge fitted on each split's training part, measured on its test part.

    The splits and the metrics are the project's one protocol (:func:`qualiclip_metric.evaluation.evaluate_regression`);
    with ``groups`` (the reference image of each image of a full-reference set) a content is never on
    both sides of a split, nor of a cross-validation fold. Rows of ``features`` with a NaN are left out.

    Args:
        features: one row per image.
        target: the subjective scores (MOS, or DMOS with ``higher_is_better=False``).
        groups: the content of each image, or None for a no-reference set.
        dataset: the dataset itself, whose paths, orientation and groups then name the report's entries.
        errors: why rows have no features, listed in the report.
    """
    y = np.asarray(target, dtype=np.float64).reshape(-1)
    if dataset is None:
        paths = [Path(f"image-{row}") for row in range(len(y))]
        contents = None if groups is None else [str(g) for g in groups]
        dataset = IQADataset("features", paths, y, higher_is_better, contents)

    def fit(x: np.ndarray, scores: np.ndarray, contents: np.ndarray | None) -> RidgeRegressor:
        return RidgeRegressor(alphas=alphas, folds=folds, seed=seed).fit(x, scores, contents)

    protocol = Protocol(splits=splits, test_fraction=test_fraction, seed=seed, bootstrap=0, split_files=split_files)
    return evaluate_regression(dataset, features, fit, protocol, errors=errors)
