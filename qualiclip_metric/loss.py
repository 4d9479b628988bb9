"""QualiCLIP as a loss term for image restoration models."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from torch import Tensor, nn

from qualiclip_metric.config import PromptPair
from qualiclip_metric.frozen import FrozenNetworkMixin, build_network
from qualiclip_metric.inputs import as_image_batch, resize_longer_side, validate_data_range, validate_max_size
from qualiclip_metric.model import QualiCLIP
from qualiclip_metric.precision import Precision


class QualiCLIPLoss(FrozenNetworkMixin, nn.Module):
    """``loss_weight * (1 - QualiCLIP score)``: minimizing it raises the perceived quality of the input.

    Args:
        weights: any source :meth:`QualiCLIP.from_pretrained` accepts, or a loaded :class:`QualiCLIP`.
        loss_weight: multiplies the loss.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (one value per image) over the batch.
        data_range: inputs are floats on ``[0, data_range]``. Values outside it are not refused, since
            restoration outputs overshoot; they are scored as they are. NaN and Inf are refused.
        max_size: downscale (differentiably) inputs whose longer side is larger, to bound memory.
        temperature: softmax temperature of the model (see :class:`QualiCLIP`).
        precision: compute precision of the model.
        prompts: antonym prompt pairs replacing the official seven (needs the text tower).

    The network's weights never receive gradients and are not in ``parameters()`` or
    ``state_dict()``, so the optimizer and checkpoints of the restoration model ignore them;
    BatchNorm stays in evaluation mode when the enclosing model trains.
    """

    def __init__(
        self,
        weights: str | Path | QualiCLIP | None = None,
        *,
        loss_weight: float = 1.0,
        reduction: Literal["mean", "sum", "none"] = "mean",
        data_range: float = 1.0,
        max_size: int | None = None,
        temperature: float | None = None,
        precision: Precision | None = None,
        prompts: Sequence[PromptPair] | None = None,
    ) -> None:
        super().__init__()
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        if isinstance(loss_weight, bool) or not isinstance(loss_weight, (int, float)) or not math.isfinite(loss_weight):
            raise ValueError(f"Argument `loss_weight` must be a finite number, but got {loss_weight!r}")
        self.loss_weight = float(loss_weight)
        self.reduction = reduction
        self.data_range = validate_data_range(data_range)
        self.max_size = validate_max_size(max_size)
        self._hold_network(build_network(weights, temperature=temperature, precision=precision, prompts=prompts))

    def forward(self, images: Tensor) -> Tensor:
        batch = as_image_batch(images, self.data_range, check_range=False)
        losses = 1.0 - self.network(resize_longer_side(batch, self.max_size), check_range=False)
        if self.reduction == "mean":
            losses = losses.mean()
        elif self.reduction == "sum":
            losses = losses.sum()
        return self.loss_weight * losses

    def extra_repr(self) -> str:
        return f"loss_weight={self.loss_weight}, reduction={self.reduction!r}, max_size={self.max_size}"
