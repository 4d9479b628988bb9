"""Functional interface: score tensors, PIL images or files in one call."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from qualiclip_metric.inputs import (
    ImageLike,
    as_image_batch,
    load_image,
    resize_longer_side,
    validate_data_range,
    validate_max_size,
)
from qualiclip_metric.model import QualiCLIP

Reduction = Literal["none", "mean", "sum"]
_default_models: dict[torch.device, QualiCLIP] = {}


def default_model(device: str | torch.device = "cpu") -> QualiCLIP:
    """The default pretrained model on ``device``, loaded once per process and device."""
    device = torch.device(device)
    if device not in _default_models:
        _default_models[device] = QualiCLIP.from_pretrained(device=device)
    return _default_models[device]


REDUCTIONS = ("none", "mean", "sum")


def _reduce(scores: Tensor, reduction: Reduction) -> Tensor:
    if reduction == "mean":
        return scores.mean()
    if reduction == "sum":
        return scores.sum()
    return scores


def score_batch(model: QualiCLIP, images: Tensor, *, per_pair: bool = False) -> Tensor:
    """Scores (N,) or pair probabilities (N, P) of a validated batch, without autograd unless needed."""
    images = images.to(model.device, non_blocking=True)
    run = model.pair_probabilities if per_pair else model
    if images.requires_grad and torch.is_grad_enabled():
        return run(images)
    with torch.inference_mode():
        result = run(images)
    return result.clone()  # a normal tensor, usable in later autograd code


def qualiclip_score(
    images: Tensor | ImageLike | Sequence[ImageLike],
    model: QualiCLIP | None = None,
    data_range: float = 1.0,
    reduction: Reduction = "none",
    max_size: int | None = None,
) -> Tensor:
    """QualiCLIP quality scores (higher is better, in [0, 1]).

    ``images`` is a tensor (N, C, H, W) or (C, H, W) in [0, data_range] (or uint8), a file path, a
    PIL image, or a sequence of those (of any sizes; same-size ones are batched together).
    ``max_size`` downscales images whose longer side exceeds it. Differentiable for tensor input
    that requires grad. ``model`` defaults to the pretrained weights on the input's device.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    validate_data_range(data_range)
    validate_max_size(max_size)
    if isinstance(images, Tensor):
        batch = resize_longer_side(as_image_batch(images, data_range), max_size)
        model = model or default_model(images.device)
        return _reduce(score_batch(model, batch), reduction)
    items = [images] if not isinstance(images, (list, tuple)) else list(images)
    if not items:
        raise ValueError("expected at least one image, got an empty sequence")
    tensors = [
        resize_longer_side(
            as_image_batch(item, data_range) if isinstance(item, Tensor) else load_image(item)[None], max_size
        )
        for item in items
    ]
    model = model or default_model("cpu")
    scores = torch.empty(len(tensors), device=model.device)
    by_size: dict[tuple[int, int], list[int]] = {}
    for index, tensor in enumerate(tensors):
        if tensor.shape[0] != 1:
            raise ValueError(f"sequence items must be single images, item {index} has shape {tuple(tensor.shape)}")
        by_size.setdefault(tuple(tensor.shape[-2:]), []).append(index)
    for indices in by_size.values():
        batch = torch.cat([tensors[i] for i in indices])
        scores[indices] = score_batch(model, batch).to(scores.dtype)
    return _reduce(scores, reduction)
