"""Scatter plot of predictions against subjective scores with the fitted logistic (needs matplotlib)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from qualiclip_metric.evaluation import fit_logistic, logistic4


def scatter_with_logistic(
    predicted: Sequence[float],
    target: Sequence[float],
    path: str | os.PathLike,
    *,
    title: str = "",
    target_label: str = "MOS",
    target_higher_is_better: bool = True,
) -> None:
    """Save a PNG (or any format matplotlib knows by the suffix) of predicted score against the target."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError("plots need matplotlib: pip install matplotlib") from err
    x, y = np.asarray(predicted, dtype=np.float64), np.asarray(target, dtype=np.float64)
    sign = 1.0 if target_higher_is_better else -1.0
    params = fit_logistic(x, sign * y)
    curve_x = np.linspace(x.min(), x.max(), 200)
    figure, axis = plt.subplots(figsize=(5, 4), dpi=120)
    axis.scatter(x, y, s=10, alpha=0.6, label="images")
    axis.plot(curve_x, sign * logistic4(curve_x, *params), color="tab:red", label="4-parameter logistic fit")
    axis.set_xlabel("QualiCLIP score (higher is better)")
    axis.set_ylabel(target_label + ("" if target_higher_is_better else " (lower is better)"))
    axis.set_title(title)
    axis.legend(loc="best")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
