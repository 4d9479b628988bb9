"""Spatial quality maps: the official score of overlapping windows of an image, one map cell per window.

The grid is a stride grid anchored at the top-left corner, with the last row and column moved to the
bottom and right borders, so that every pixel lies in at least one window and every window lies inside
the image. Each window is scored exactly as :class:`~qualiclip_metric.model.QualiCLIP` scores a whole
image: a cell equals ``model(crop)`` of its crop.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from qualiclip_metric.inputs import MIN_IMAGE_SIDE, as_image_batch, validate_positive_int

if TYPE_CHECKING:
    from qualiclip_metric.model import QualiCLIP

#: Windows per forward pass by default: enough to fill a GPU, and a few hundred MB of activations at 224 px.
DEFAULT_CHUNK_SIZE = 16


def validate_window(patch: object, stride: object) -> tuple[int, int]:
    """``(patch, stride)`` checked: positive integers with ``MIN_IMAGE_SIDE <= patch`` and ``stride <= patch``.

    A stride longer than the window would leave pixels that no window sees, and the map would say nothing
    about them. A window below the network's minimum side (31 pixels) could not be scored in any image.

    Raises:
        ValueError: either is not a positive integer, ``patch < MIN_IMAGE_SIDE``, or ``stride > patch``.
    """
    patch, stride = validate_positive_int(patch, "patch"), validate_positive_int(stride, "stride")
    if patch < MIN_IMAGE_SIDE:
        raise ValueError(
            f"Argument `patch` must be at least {MIN_IMAGE_SIDE} (the network's minimum image side), but got {patch}"
        )
    if stride > patch:
        raise ValueError(
            f"Argument `stride` must be at most `patch` ({patch}) so that every pixel lies in a window, "
            f"but got {stride}"
        )
    return patch, stride


def window_starts(length: int, patch: int = 224, stride: int = 112) -> list[int]:
    """The first pixel of each window along a side of ``length`` pixels, in map order.

    ``0, stride, 2 * stride, ...`` as long as the window fits; when the last of these does not end at the
    border, one more window starts at ``length - patch`` (it overlaps its neighbour by more than the others
    do). A side shorter than ``patch`` has one window, ``[0]``, covering the whole side: the windows are then
    ``length`` pixels long along that side. Window ``k`` covers pixels ``starts[k]`` to
    ``starts[k] + min(patch, length) - 1``.

    Raises:
        ValueError: ``length``, ``patch`` or ``stride`` is not a positive integer, or ``stride > patch``.

    Examples:
        >>> window_starts(500, 224, 112)
        [0, 112, 224, 276]
        >>> window_starts(448, 224, 112)
        [0, 112, 224]
        >>> window_starts(100, 224, 112)
        [0]
    """
    length = validate_positive_int(length, "length")
    patch, stride = validate_window(patch, stride)
    if length <= patch:
        return [0]
    starts = list(range(0, length - patch + 1, stride))
    if starts[-1] != length - patch:
        starts.append(length - patch)
    return starts


def quality_map(
    model: QualiCLIP,
    images: Tensor,
    patch: int = 224,
    stride: int = 112,
    *,
    per_pair: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    data_range: float = 1.0,
) -> Tensor:
    """The score of every ``patch`` x ``patch`` window of each image, laid out as a map.

    Cell ``(i, j)`` of image ``n`` is ``model(crop)`` of the window with its top-left corner at
    ``(window_starts(H, patch, stride)[i], window_starts(W, patch, stride)[j])``: the stride grid, with the
    last row and column aligned to the bottom and right borders (see :func:`window_starts`). On a side
    shorter than ``patch`` the windows span the whole side. The model's backend, precision and fast mode
    apply as in ``model(images)``.

    Windows go through the network in chunks of at most ``chunk_size`` (windows of consecutive images may
    share a chunk); each chunk is copied out of the image when it is scored and moved to the model's device,
    so memory holds the image and one chunk, never every window. The image itself may stay on the CPU.

    Gradients are tracked only where the model's forward would need them (grad mode on, and images or
    weights that require grad; the torch backend only); otherwise the map is computed under
    :func:`torch.no_grad`, so activations are freed chunk by chunk. Tracked, every chunk's graph is kept
    until the backward pass.

    Args:
        model: the scorer.
        images: (N, C, H, W) or (C, H, W), as ``model(images)`` accepts them (float in ``[0, data_range]``
            or uint8; C = 1 or 3; at least 31 pixels a side).
        patch: window side in pixels.
        stride: step between window starts, at most ``patch``.
        per_pair: return the probability of every antonym pair instead of the score; their mean over
            dimension 1 is the score map.
        chunk_size: windows per forward pass (bounds memory; the values do not depend on it).
        data_range: the value of white in ``images`` (float images only).

    Returns:
        (N, rows, cols) scores, or (N, P, rows, cols) pair probabilities with ``per_pair``, on the model's
        device; pairs in the order of :attr:`QualiCLIP.pair_names`.

    Raises:
        ValueError: invalid images, or ``patch``, ``stride`` or ``chunk_size`` that is not a positive
            integer, or ``stride > patch``.
        RuntimeError: gradients asked of a backend other than torch (as ``model(images)`` raises).

    Examples:
        >>> cells = quality_map(model, torch.rand(3, 500, 500))  # doctest: +SKIP
        >>> cells.shape  # starts 0, 112, 224, 276 on both sides
        torch.Size([1, 4, 4])
    """
    patch, stride = validate_window(patch, stride)
    chunk_size = validate_positive_int(chunk_size, "chunk_size")
    x = as_image_batch(images, data_range=data_range)
    n, _, height, width = x.shape
    rows, cols = window_starts(height, patch, stride), window_starts(width, patch, stride)
    track = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in model.parameters()))
    scorer = model.pair_probabilities if per_pair else model
    with torch.set_grad_enabled(track):
        values = torch.cat(
            [scorer(chunk, check_range=False) for chunk in _chunks(x, rows, cols, patch, chunk_size, model.device)]
        )
    if not per_pair:
        return values.reshape(n, len(rows), len(cols))
    return values.reshape(n, len(rows), len(cols), -1).permute(0, 3, 1, 2)


def _chunks(
    x: Tensor, rows: list[int], cols: list[int], patch: int, chunk_size: int, device: torch.device
) -> Iterator[Tensor]:
    """Stacks of at most ``chunk_size`` windows, in (image, row, column) order, each made when asked for."""
    window_h, window_w = min(patch, x.shape[-2]), min(patch, x.shape[-1])
    corners = [(k, top, left) for k in range(x.shape[0]) for top in rows for left in cols]
    for first in range(0, len(corners), chunk_size):
        crops = [
            x[k, :, top : top + window_h, left : left + window_w]
            for k, top, left in corners[first : first + chunk_size]
        ]
        yield torch.stack(crops).to(device)


def piecewise_quality_map(
    cells: Tensor, height: int, width: int, patch: int = 224, stride: int = 112
) -> tuple[list[int], list[int], Tensor]:
    """The map per pixel in compact form: on each rectangle between window borders, one value.

    Windows overlap, so a pixel lies in several; its value is the mean of the cells of every window that
    covers it. That mean is constant between consecutive window borders, so it is returned as row edges,
    column edges and the value of each rectangle (what ``matplotlib``'s ``pcolormesh`` draws), whatever the
    image size.

    Args:
        cells: (..., rows, cols), as :func:`quality_map` returns for an image of ``height`` x ``width``.
        height: the image's height in pixels.
        width: its width.
        patch: the window side the map was computed with.
        stride: the stride it was computed with.

    Returns:
        ``(row_edges, col_edges, values)``: edges from 0 to ``height`` and ``width``, and
        (..., len(row_edges) - 1, len(col_edges) - 1) values in ``cells``' floating dtype.

    Raises:
        ValueError: ``cells`` does not have the grid's shape for this size, patch and stride.
    """
    rows, cols = window_starts(height, patch, stride), window_starts(width, patch, stride)
    if not isinstance(cells, Tensor) or cells.ndim < 2 or tuple(cells.shape[-2:]) != (len(rows), len(cols)):
        shape = tuple(cells.shape) if isinstance(cells, Tensor) else type(cells).__name__
        raise ValueError(
            f"Argument `cells` must be a tensor shaped (..., {len(rows)}, {len(cols)}) (the grid of a "
            f"{height} x {width} image at patch {patch}, stride {stride}), but got {shape}"
        )
    dtype = cells.dtype if cells.is_floating_point() else torch.float32
    row_edges, row_cover = _coverage(height, rows, min(patch, height), cells.device, dtype)
    col_edges, col_cover = _coverage(width, cols, min(patch, width), cells.device, dtype)
    # The windows form a product grid: the sum over covering windows is row_cover @ cells @ col_cover.T,
    # and their count is the product of the row and column counts.
    total = row_cover @ cells.to(dtype) @ col_cover.T
    count = row_cover.sum(dim=1)[:, None] * col_cover.sum(dim=1)[None, :]
    return row_edges, col_edges, total / count


def upsample_quality_map(cells: Tensor, height: int, width: int, patch: int = 224, stride: int = 112) -> Tensor:
    """The map per pixel, (..., height, width): each pixel the mean of the cells of the windows covering it.

    The same values as :func:`piecewise_quality_map`, expanded to every pixel (mind the memory on large
    images: a float per pixel and per leading index).

    Raises:
        ValueError: ``cells`` does not have the grid's shape for this size, patch and stride.
    """
    row_edges, col_edges, values = piecewise_quality_map(cells, height, width, patch, stride)
    row_lengths = torch.tensor(row_edges, device=values.device).diff()
    col_lengths = torch.tensor(col_edges, device=values.device).diff()
    return values.repeat_interleave(row_lengths, dim=-2).repeat_interleave(col_lengths, dim=-1)


def _coverage(
    length: int, starts: list[int], window: int, device: torch.device, dtype: torch.dtype
) -> tuple[list[int], Tensor]:
    """Segment edges along one side and the (segments, windows) matrix of which window covers which segment."""
    edges = sorted({0, length, *starts, *(start + window for start in starts)})
    lower = torch.tensor(edges[:-1], device=device)[:, None]
    first = torch.tensor(starts, device=device)[None, :]
    cover = (first <= lower) & (lower < first + window)
    return edges, cover.to(dtype)
