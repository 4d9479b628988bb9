"""Figures (need matplotlib): predictions against subjective scores with the fitted logistic, quality maps."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from qualiclip_metric.evaluation import fit_logistic, logistic4

if TYPE_CHECKING:
    from torch import Tensor


def _pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (files only, no window), or an error that says what to install."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError('plots need matplotlib: pip install "qualiclip-metric[plot]"') from err
    return plt


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
    plt = _pyplot()
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


def render_quality_map(
    image: Tensor,
    cells: Tensor,
    target: str | os.PathLike | BinaryIO | None = None,
    *,
    patch: int = 224,
    stride: int = 112,
    score: float | None = None,
    title: str | None = None,
    alpha: float = 0.5,
    cmap: str = "viridis",
    limits: tuple[float, float] | None = None,
    format: str | None = None,
) -> bytes | None:
    """Draw a quality map over its image, with a colour bar and the image's own score in the title.

    Each pixel is painted with the mean of the cells of every window covering it
    (:func:`~qualiclip_metric.quality_map.piecewise_quality_map`), so the overlay has the image's
    geometry whatever the stride. Usable without the command line, e.g. to embed maps in a report.

    Args:
        image: (3, H, W) or (1, 3, H, W) float in [0, 1] (or uint8): the image the map was computed on.
        cells: its (rows, cols) map, as ``quality_map(...)[n]`` returns it.
        target: a file name (format from the suffix, PNG without one) or a binary file object; None
            returns the encoded bytes instead.
        patch: the window side the map was computed with.
        stride: the stride it was computed with.
        score: the whole image's score, ``model(image)``, shown in the title.
        title: a first title line (a file name, say).
        alpha: opacity of the overlay.
        cmap: a matplotlib colour map name.
        limits: the score range of the colour bar; default the map's own minimum and maximum (pass
            ``(0, 1)`` for colours comparable between images).
        format: the image format (``"png"``, ``"svg"``, ...); default from ``target``'s suffix, else PNG.

    Returns:
        The encoded image when ``target`` is None, else None.

    Raises:
        ImportError: matplotlib is not installed.
        ValueError: ``image`` is not a valid image, or ``cells`` does not have its grid's shape.

    Examples:
        >>> cells = model.quality_map(image)  # doctest: +SKIP
        >>> png = render_quality_map(image, cells[0], score=model(image).item())  # doctest: +SKIP
    """
    import io

    import torch

    from qualiclip_metric.inputs import as_image_batch
    from qualiclip_metric.quality_map import piecewise_quality_map

    plt = _pyplot()
    pixels = as_image_batch(image)
    if pixels.shape[0] != 1:
        raise ValueError(f"Argument `image` must be one image, but got a batch of {pixels.shape[0]}")
    height, width = pixels.shape[-2:]
    cells = torch.as_tensor(cells).detach().cpu().float()
    row_edges, col_edges, values = piecewise_quality_map(cells, height, width, patch, stride)
    low, high = (float(cells.min()), float(cells.max())) if limits is None else limits
    figure_width = 7.0
    figure, axis = plt.subplots(figsize=(figure_width, max(2.5, min(12.0, 0.8 * figure_width * height / width)) + 1))
    try:
        axis.imshow(pixels[0].permute(1, 2, 0).detach().cpu().numpy(), extent=(0, width, height, 0))
        mesh = axis.pcolormesh(col_edges, row_edges, values.numpy(), cmap=cmap, alpha=alpha, vmin=low, vmax=high)
        axis.set_xlim(0, width)
        axis.set_ylim(height, 0)
        axis.set_axis_off()
        bar = figure.colorbar(mesh, ax=axis, fraction=0.046, pad=0.04, label="window score (higher is better)")
        bar.solids.set_alpha(1.0)  # the bar shows the colour map itself, not its blend with the image
        lines = [title] if title else []
        whole = f"QualiCLIP {score:.4f}" if score is not None else "QualiCLIP map"
        lines.append(f"{whole}; windows {min(patch, height)} x {min(patch, width)} px, stride {stride} px")
        lines.append(f"map from {float(cells.min()):.4f} to {float(cells.max()):.4f}")
        axis.set_title("\n".join(lines), fontsize=9)
        figure.tight_layout()
        if target is None:
            buffer = io.BytesIO()
            figure.savefig(buffer, format=format or "png")
            return buffer.getvalue()
        if isinstance(target, (str, os.PathLike)) and format is None and not os.path.splitext(target)[1]:
            format = "png"
        figure.savefig(target, format=format)
        return None
    finally:
        plt.close(figure)
