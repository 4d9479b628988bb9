"""QualiCLIP as a torchmetrics ``Metric``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from qualiclip_metric.config import PromptPair
from qualiclip_metric.frozen import FrozenNetworkMixin, build_network
from qualiclip_metric.functional import qualiclip_score
from qualiclip_metric.inputs import validate_data_range, validate_max_size
from qualiclip_metric.model import QualiCLIP
from qualiclip_metric.precision import Precision
from qualiclip_metric.runtimes import Backend

REDUCTIONS = ("mean", "sum", "none")


class QualiCLIPScore(FrozenNetworkMixin, Metric):
    """No-reference image quality (higher is better, in [0, 1]), accumulated over batches.

    Args:
        weights: any source :meth:`QualiCLIP.from_pretrained` accepts, or a loaded :class:`QualiCLIP`.
        data_range: images are floats in ``[0, data_range]`` (uint8 images are always in [0, 255]).
        reduction: ``"mean"`` or ``"sum"`` over all images seen, or ``"none"`` for every score in order.
        temperature: softmax temperature of the model (see :class:`QualiCLIP`).
        precision: compute precision of the model.
        prompts: antonym prompt pairs replacing the official seven (needs the text tower).
        fast: serve the updates that need no gradient from the inference-only trunk.
        backend: "torch" (default, differentiable), "openvino" or "onnxruntime" (CPU, no gradients;
            see :meth:`QualiCLIP.from_pretrained`).
        max_size: downscale images whose longer side is larger (antialiased, differentiable).
        kwargs: options of :class:`torchmetrics.Metric` (``sync_on_compute``, ``compute_on_cpu``, ...).

    The network is frozen and stays in evaluation mode. It is not part of ``parameters()`` or
    ``state_dict()``; ``.to(device)`` and ``set_dtype`` move it with the metric states.
    """

    is_differentiable = True
    higher_is_better = True
    full_state_update = False
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    sum_scores: Tensor
    num_scores: Tensor
    scores: list[Tensor]

    def __init__(
        self,
        weights: str | Path | QualiCLIP | None = None,
        data_range: float = 1.0,
        reduction: Literal["mean", "sum", "none"] = "mean",
        temperature: float | None = None,
        precision: Precision | None = None,
        prompts: Sequence[PromptPair] | None = None,
        fast: bool | None = None,
        max_size: int | None = None,
        backend: Backend | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if reduction not in REDUCTIONS:
            raise ValueError(f"Argument `reduction` must be one of {REDUCTIONS}, but got {reduction!r}")
        self.reduction = reduction
        self.data_range = validate_data_range(data_range)
        self.max_size = validate_max_size(max_size)
        self._hold_network(
            build_network(
                weights, temperature=temperature, precision=precision, prompts=prompts, fast=fast, backend=backend
            )
        )
        if reduction == "none":
            self.add_state("scores", default=[], dist_reduce_fx="cat")
        else:
            self.add_state("sum_scores", default=torch.tensor(0.0), dist_reduce_fx="sum")
            self.add_state("num_scores", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, images: Tensor, target: Tensor | None = None) -> None:
        """Score a batch (N, 3, H, W) or (3, H, W).

        ``target`` is ignored (QualiCLIP needs no reference); it is accepted so the metric can share a
        ``MetricCollection`` with full-reference metrics such as PSNR, which receive ``(preds, target)``.
        """
        scores = qualiclip_score(images, self.network, data_range=self.data_range, max_size=self.max_size)
        if self.reduction == "none":
            self.scores.append(scores)
        else:
            self.sum_scores += scores.sum().to(self.sum_scores.dtype)
            self.num_scores += scores.numel()

    def compute(self) -> Tensor:
        if self.reduction == "none":
            if isinstance(self.scores, list) and not self.scores:
                return torch.empty(0, device=self.device)
            return dim_zero_cat(self.scores)  # a list of batches, or one tensor after a DDP sync
        if self.reduction == "sum":
            return self.sum_scores
        return self.sum_scores / self.num_scores

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The batch value, differentiable when the input requires grad; accumulates detached scores."""
        batch_value = super().forward(*args, **kwargs)
        if self.reduction == "none":  # list states keep the batch tensors: drop their autograd graph
            self.scores = [score.detach() for score in self.scores]
        return batch_value

    def plot(self, val: Tensor | Sequence[Tensor] | None = None, ax: Any = None) -> Any:
        """Plot a single or multiple values from the metric (needs matplotlib)."""
        return self._plot(val, ax)
