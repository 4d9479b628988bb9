"""RankIQA's efficient Siamese ranking loss: one forward pass, every ordered pair of a batch.

A batch holds several groups (one crop of one image under one distortion at every level); within a
group a lower rank means a better image. Each pair (better i, worse j) of the same group adds
``max(0, margin - (f_i - f_j))``. Scoring every image once and forming all pairs from the scores
costs one pass instead of one per pair, which is the point of the paper's "efficient" back-propagation.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Reduction = Literal["mean", "sum"]


def ranking_pairs(ranks: Tensor, groups: Tensor) -> Tensor:
    """(N, N) boolean matrix: ``[i, j]`` is true when i and j share a group and i is better (lower rank)."""
    if ranks.shape != groups.shape or ranks.ndim != 1:
        raise ValueError(
            f"ranks and groups must be equal 1-d shapes, got {tuple(ranks.shape)} and {tuple(groups.shape)}"
        )
    return (groups[:, None] == groups[None, :]) & (ranks[:, None] < ranks[None, :])


def batch_hinge_loss(
    scores: Tensor, ranks: Tensor, groups: Tensor, margin: float = 10.0, reduction: Reduction = "mean"
) -> dict[str, Tensor]:
    """``loss`` over all ordered pairs, and ``pair_accuracy``: the fraction of pairs scored in the right order.

    ``mean`` divides by the number of pairs (a batch's loss does not grow with its size); ``sum`` adds them.
    """
    if scores.shape != ranks.shape:
        raise ValueError(f"{scores.shape[0] if scores.ndim else 0} scores for {ranks.numel()} ranks")
    pairs = ranking_pairs(ranks, groups)
    count = int(pairs.sum())
    if count == 0:
        zero = scores.sum() * 0.0  # keeps the graph, so every rank still takes part in DDP's all-reduce
        return {"loss": zero, "pair_accuracy": zero.detach(), "pairs": torch.zeros((), device=scores.device)}
    difference = scores[:, None] - scores[None, :]  # f_i - f_j: positive when i (better) scores higher
    hinge = torch.clamp(margin - difference[pairs], min=0.0)
    loss = hinge.sum() if reduction == "sum" else hinge.mean()
    correct = (difference[pairs] > 0).float().mean().detach()
    return {"loss": loss, "pair_accuracy": correct, "pairs": torch.tensor(float(count), device=scores.device)}
