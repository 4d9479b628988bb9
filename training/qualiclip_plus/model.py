"""What QualiCLIP+ trains: the learned prompt context, over frozen CLIP towers, scored as the library scores.

Only :attr:`PromptLearner.ctx` learns. The image tower gives features under ``torch.no_grad()`` through
:meth:`QualiCLIP.image_features`, the text transformer turns the context into prompt features on every
step, and the score is :meth:`QualiCLIP.pair_probabilities_from_features` averaged over the pairs (what
``QualiCLIP.forward`` returns), so training scores are inference scores. Both towers are held outside
the module's parameters and state dict: a training state holds the prompt learner alone (3 MB with Adam's
moments), and the towers are rebuilt from ``model.init`` on resume.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qualiclip_metric.checkpoint import Checkpoint
from qualiclip_metric.config import DEFAULT_PROMPT_PAIRS
from qualiclip_metric.errors import CheckpointError, WeightsNotFoundError
from qualiclip_metric.model import QualiCLIP
from qualiclip_metric.prompt_learner import CONTEXT_TOKENS, PromptLearner, scoring_with_prompt_features
from qualiclip_metric.text import build_text_tower
from training.errors import TrainingError
from training.qualiclip.model import load_clip_weights


@dataclass(frozen=True)
class ModelConfig:
    """Where the frozen towers come from and how the context starts."""

    #: "qualiclip" (the authors' checkpoint, which pyiqa's QualiCLIP+ learns its prompts on), "openai"
    #: (CLIP RN50), "random", or a local/Hub source; it must hold the text tower.
    init: str = "qualiclip"
    #: Seed of the random towers (``init: random``) and of the context's initialisation.
    init_seed: int = 0
    #: Learned context tokens per prompt, split in two halves around the prompt's words.
    context_tokens: int = CONTEXT_TOKENS
    #: The context starts as N(0, init_std^2), as in CoOp and pyiqa.
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.context_tokens != CONTEXT_TOKENS:
            raise ValueError(
                f"context_tokens must be {CONTEXT_TOKENS} (pyiqa's QualiCLIP+ layout, the one the export's "
                f"prompt-learner conversion reads), got {self.context_tokens}"
            )
        if not self.init_std > 0:
            raise ValueError(f"init_std must be positive, got {self.init_std}")


@dataclass(frozen=True)
class LossConfig:
    """Weights of pyiqa's two MOS losses: MSE and the PLCC loss, between the score and the scaled MOS."""

    mse: float = 1.0
    plcc: float = 1.0

    def __post_init__(self) -> None:
        if self.mse < 0 or self.plcc < 0 or self.mse + self.plcc == 0:
            raise ValueError(
                f"loss weights must be non-negative and not both zero, got mse={self.mse}, plcc={self.plcc}"
            )


def plcc_loss(predicted: Tensor, target: Tensor) -> Tensor:
    """pyiqa's PLCC loss, ``(1 - r) / 2`` in [0, 1] (the L1 distance for a batch of one, where r is undefined)."""
    if predicted.numel() < 2:
        return F.l1_loss(predicted, target)
    x, y = predicted - predicted.mean(), target - target.mean()
    return (1 - (F.normalize(x, dim=0) * F.normalize(y, dim=0)).sum()) / 2


def mos_losses(scores: Tensor, targets: Tensor, config: LossConfig) -> dict[str, Tensor]:
    """``loss = mse * MSE + plcc * PLCC loss`` and both terms, for scores and targets (B,) in [0, 1]."""
    mse = F.mse_loss(scores, targets)
    plcc = plcc_loss(scores, targets)
    return {"loss": config.mse * mse + config.plcc * plcc, "mse": mse, "plcc": plcc}


def load_base(config: ModelConfig) -> Checkpoint:
    """CLIP or QualiCLIP weights from ``model.init``, with the text tower the learned prompts go through."""
    try:
        checkpoint = load_clip_weights(config.init, config.init_seed, need_text=True)
    except (CheckpointError, WeightsNotFoundError) as err:
        raise TrainingError(f"model.init: {err}") from err
    return checkpoint


class QualiCLIPPlusTrainingModule(nn.Module):
    """Maps a batch ``{"images": (B, 3, S, S), "targets": (B,)}`` to the MOS losses of QualiCLIP+'s score."""

    def __init__(self, base: Checkpoint, config: ModelConfig, loss: LossConfig) -> None:
        super().__init__()
        if base.text_state is None:
            raise TrainingError(f"model.init: {base.origin} holds no text tower, which learned prompts need")
        generator = torch.Generator().manual_seed(config.init_seed)
        tower = build_text_tower(base.text_state, base.origin)
        self.learner = PromptLearner(tower, DEFAULT_PROMPT_PAIRS, config.context_tokens, config.init_std, generator)
        with torch.no_grad():
            features = F.normalize(self.learner().float(), dim=-1)
        #: Kept in a list, outside parameters() and state_dict(): frozen, and rebuilt from ``model.init``.
        try:
            scoring = scoring_with_prompt_features(base, features)
        except CheckpointError as err:
            raise TrainingError(f"model.init: {err}") from err
        self._frozen = [QualiCLIP.from_checkpoint(scoring)]
        #: The starting weights, for the export's conversion (plain tensors, not part of the state dict).
        self.base = base
        self.loss_config = loss

    @property
    def scorer(self) -> QualiCLIP:
        return self._frozen[0]

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> QualiCLIPPlusTrainingModule:
        """``.to(device)`` and friends move the frozen towers along with the learner."""
        super()._apply(fn, recurse)
        self.scorer._apply(fn, recurse)
        self.learner.tower._apply(fn, recurse)
        return self

    def prompt_features(self) -> Tensor:
        """(14, 1024) normalised features of the learned prompts, in float32 whatever the caller's autocast."""
        with torch.autocast(self.learner.ctx.device.type, enabled=False):
            return F.normalize(self.learner().float(), dim=-1)

    def scores_from_features(self, features: Tensor, prompts: Tensor) -> Tensor:
        """The library's score of normalised image features against ``prompts``, differentiable in ``prompts``."""
        scorer = self.scorer
        scorer.prompts_features = prompts
        try:
            return scorer.pair_probabilities_from_features(features).mean(dim=-1)
        finally:
            scorer.prompts_features = prompts.detach()

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        images, targets = batch["images"], batch["targets"]
        with torch.no_grad():  # the image tower is frozen: no graph, no gradients
            features = self.scorer.image_features(images)
        scores = self.scores_from_features(features, self.prompt_features())
        return mos_losses(scores, targets.float(), self.loss_config)

    @torch.no_grad()
    def inference_scorer(self) -> QualiCLIP:
        """The frozen scorer holding the current learned prompts: what the export will score like."""
        self.scorer.prompts_features = self.prompt_features().detach()
        return self.scorer
