"""The three margin ranking losses of QualiCLIP, on image-prompt cosine similarities.

Notation: for a batch of B pristine images, two overlapping crops ``a`` and ``b`` are degraded at L
increasing levels (level 1 mildest). ``s_p[k, c, i]`` and ``s_n[k, c, i]`` are the cosine similarities of
crop ``c`` of image ``k`` at level ``i`` to the positive and the negative prompt of antonym pair ``k'``
(every pair is used, and the losses are averaged over pairs). With hinge ``[z]+ = max(0, z)``:

- ``L_cons = mean over k, i, pairs of [|s_p[k,a,i] - s_p[k,b,i]| - m_cons]+ + [|s_n[k,a,i] - s_n[k,b,i]| - m_cons]+``:
  the two crops share content and degradation, so their similarities must agree (within ``m_cons``);
- ``L_pos = mean over k, c, i < j, pairs of [m_pos - (s_p[k,c,i] - s_p[k,c,j])]+``: similarity to the
  positive prompt must fall by at least ``m_pos`` as the degradation grows;
- ``L_neg = mean over k, c, i < j, pairs of [m_neg - (s_n[k,c,j] - s_n[k,c,i])]+``: similarity to the
  negative prompt must rise by at least ``m_neg``;
- ``L = w_cons L_cons + w_pos L_pos + w_neg L_neg``.

The paper publishes the three losses but not their margins or weights; the defaults of
:class:`QualiCLIPLossConfig` are this project's choices: a zero consistency margin (the two crops should
agree exactly) and ranking margins of 0.05 in cosine similarity, all of it configuration.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class QualiCLIPLossConfig:
    """Margins and weights (not published: these are our defaults)."""

    margin_cons: float = 0.0
    margin_pos: float = 0.05
    margin_neg: float = 0.05
    weight_cons: float = 1.0
    weight_pos: float = 1.0
    weight_neg: float = 1.0


def prompt_similarities(image_features: Tensor, prompt_features: Tensor) -> tuple[Tensor, Tensor]:
    """Cosine similarities to the positive and negative prompts: two tensors (..., P).

    ``image_features`` (..., D) and ``prompt_features`` (2P, D) are L2-normalized, positive prompt first.
    """
    similarities = image_features @ prompt_features.T
    return similarities[..., 0::2], similarities[..., 1::2]


def qualiclip_losses(
    positive: Tensor, negative: Tensor, config: QualiCLIPLossConfig = QualiCLIPLossConfig()
) -> dict[str, Tensor]:
    """``L_cons``, ``L_pos``, ``L_neg`` and their weighted sum ``loss`` from similarities shaped (B, 2, L, P).

    Dimension 1 holds the two crops, dimension 2 the levels from mildest to strongest.
    """
    if positive.shape != negative.shape or positive.ndim != 4 or positive.shape[1] != 2:
        raise ValueError(
            f"similarities must both be shaped (batch, 2 crops, levels, pairs), got {tuple(positive.shape)} "
            f"and {tuple(negative.shape)}"
        )
    if positive.shape[2] < 2:
        raise ValueError(f"ranking needs at least 2 levels, got {positive.shape[2]}")
    consistency = (
        (positive[:, 0] - positive[:, 1]).abs().sub(config.margin_cons).clamp(min=0)
        + (negative[:, 0] - negative[:, 1]).abs().sub(config.margin_cons).clamp(min=0)
    ).mean()
    # Every ordered pair of levels i < j (upper triangle), for both crops and all prompt pairs.
    levels = positive.shape[2]
    milder, stronger = torch.triu_indices(levels, levels, offset=1, device=positive.device)
    positive_drop = positive[:, :, milder] - positive[:, :, stronger]
    negative_rise = negative[:, :, stronger] - negative[:, :, milder]
    ranking_pos = (config.margin_pos - positive_drop).clamp(min=0).mean()
    ranking_neg = (config.margin_neg - negative_rise).clamp(min=0).mean()
    total = config.weight_cons * consistency + config.weight_pos * ranking_pos + config.weight_neg * ranking_neg
    return {"loss": total, "cons": consistency, "pos": ranking_pos, "neg": ranking_neg}
