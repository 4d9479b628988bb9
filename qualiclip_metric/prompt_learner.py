"""QualiCLIP+ learned prompts (CoOp-style), in pyiqa's file layout, and their conversion to prompt features.

Each of the 14 prompts ("Good photo.", "Bad photo.", ...) gets its own 16 learned context embeddings,
split in two halves around the prompt's own word embeddings:
``[start] ctx[:8] words ctx[8:] [end] padding``. The text transformer turns each sequence into a
feature. At inference the learned context is constant, so the 14 features are computed once and stored
like QualiCLIP's prompt features: a converted QualiCLIP+ checkpoint scores with the image tower alone.

pyiqa's file holds ``{"params": {"prompt_learner.ctx": (14, 16, 512), "prompt_learner.token_prefix":
(14, 1, 512), "prompt_learner.token_suffix": (14, 60, 512)}}``: the context, and the embeddings of the
start token and of everything after the 16 context slots of ``"X X ... X <prompt>"`` (the words, the
end token and the padding).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qualiclip_metric.checkpoint import Checkpoint, read_state_dict
from qualiclip_metric.config import DEFAULT_PROMPT_PAIRS, SCORE_LOGIT_SCALE, PromptPair, validate_prompt_pairs
from qualiclip_metric.errors import CheckpointError

PREFIX = "prompt_learner."
KEYS = ("ctx", "token_prefix", "token_suffix")
CONTEXT_TOKENS = 16
#: The temperature pyiqa trains and scores QualiCLIP+ with (its logits use exp(logit_scale), i.e. 100).
TEMPERATURE = 2.0
#: How far a file's word embeddings may be from the text tower's (fp16 storage rounds them by ~5e-4).
EMBEDDING_TOLERANCE = 1e-2


def prompt_texts(pairs: Sequence[PromptPair] = DEFAULT_PROMPT_PAIRS) -> list[str]:
    """The prompts in pyiqa's order: positive then negative of every pair."""
    return [text for pair in validate_prompt_pairs(pairs) for text in pair]


class PromptLearner(nn.Module):
    """Learned context around each prompt, turned into text features by a frozen text tower.

    ``forward()`` returns the (2P, 1024) features, not normalized; it is differentiable in :attr:`ctx`,
    which is what ``training/`` optimises. The tower (from :func:`qualiclip_metric.text.build_text_tower`)
    is held outside the module's parameters and state dict.
    """

    def __init__(
        self,
        tower: nn.Module,
        pairs: Sequence[PromptPair] = DEFAULT_PROMPT_PAIRS,
        context_tokens: int = CONTEXT_TOKENS,
        init_std: float = 0.02,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        from qualiclip_metric.text import token_count, tokenize

        if context_tokens < 1:
            raise ValueError(f"Argument `context_tokens` must be at least 1, got {context_tokens}")
        self.pairs = validate_prompt_pairs(pairs)
        texts = prompt_texts(self.pairs)
        self.word_counts = [token_count(text) for text in texts]
        tokens = tokenize([" ".join(["X"] * context_tokens) + " " + text for text in texts])
        self.register_buffer("end_index", tokens.argmax(dim=-1), persistent=False)
        width = tower.token_embedding.weight.shape[1]
        with torch.no_grad():
            embeddings = tower.token_embedding(tokens).float()
        self.register_buffer("token_prefix", embeddings[:, :1].clone())
        self.register_buffer("token_suffix", embeddings[:, 1 + context_tokens :].clone())
        ctx = torch.empty(len(texts), context_tokens, width).normal_(0, init_std, generator=generator)
        self.ctx = nn.Parameter(ctx)
        self._tower = [tower]  # a list keeps the frozen tower out of parameters() and state_dict()

    @property
    def context_tokens(self) -> int:
        return self.ctx.shape[1]

    @property
    def tower(self) -> nn.Module:
        return self._tower[0]

    def sequences(self) -> Tensor:
        """(2P, 77, 512) input embeddings: start, first half of the context (the shorter one for an odd
        count, as pyiqa splits it), words, second half, the rest."""
        half = self.context_tokens // 2
        rows = []
        for i, words in enumerate(self.word_counts):
            prefix, ctx, suffix = self.token_prefix[i], self.ctx[i], self.token_suffix[i]
            rows.append(torch.cat([prefix, ctx[:half], suffix[:words], ctx[half:], suffix[words:]]))
        return torch.stack(rows)

    def forward(self) -> Tensor:
        from qualiclip_metric.text import encode_embeddings

        return encode_embeddings(self.tower, self.sequences(), self.end_index)

    def load_pyiqa_state(self, state: Mapping[str, object], origin: str) -> None:
        """Take ``ctx``, ``token_prefix`` and ``token_suffix`` from a pyiqa state dict, checking them first.

        The file's word embeddings must be the tower's embeddings of these prompts: a prompt learner
        made for other prompts or another text tower would give meaningless features.
        """
        tensors = {}
        for key in KEYS:
            value = state.get(PREFIX + key)
            if not isinstance(value, Tensor):
                raise CheckpointError(f"{origin}: not a QualiCLIP+ prompt learner: {PREFIX + key} is missing")
            tensors[key] = value.detach().float()
        own = {"ctx": self.ctx, "token_prefix": self.token_prefix, "token_suffix": self.token_suffix}
        wrong = [
            f"{k}: file {tuple(tensors[k].shape)}, expected {tuple(own[k].shape)}"
            for k in KEYS
            if tensors[k].shape != own[k].shape
        ]
        if wrong:
            raise CheckpointError(
                f"{origin}: prompt learner does not fit {len(self.word_counts)} prompts with "
                f"{self.context_tokens} context tokens ({'; '.join(wrong)})"
            )
        not_finite = [k for k in KEYS if not torch.isfinite(tensors[k]).all()]
        if not_finite:
            raise CheckpointError(f"{origin}: prompt learner holds NaN or Inf values ({', '.join(not_finite)})")
        distance = max(
            float((tensors["token_suffix"][i, :count] - self.token_suffix[i, :count]).abs().max())
            for i, count in enumerate(self.word_counts)
        )
        distance = max(distance, float((tensors["token_prefix"] - self.token_prefix).abs().max()))
        scale = float(self.token_suffix.abs().max())
        if distance > EMBEDDING_TOLERANCE * scale:
            raise CheckpointError(
                f"{origin}: the prompt learner's word embeddings differ from the text tower's by {distance:.3g}; "
                "it was made for other prompts or another CLIP text tower"
            )
        with torch.no_grad():
            self.ctx.copy_(tensors["ctx"])
            self.token_prefix.copy_(tensors["token_prefix"])
            self.token_suffix.copy_(tensors["token_suffix"])

    def pyiqa_state(self) -> dict[str, dict[str, Tensor]]:
        """This learner in pyiqa's file layout, for ``pyiqa.create_metric(..., pretrained_model_path=FILE)``."""
        return {"params": {PREFIX + key: getattr(self, key).detach().cpu().clone() for key in KEYS}}


def read_prompt_learner(path: str | os.PathLike) -> dict[str, Tensor]:
    """The tensors of a pyiqa prompt-learner ``.pth`` (``weights_only``), unwrapped from ``params``."""
    return read_state_dict(path)


def is_prompt_learner(path: str | os.PathLike) -> bool:
    """Whether a local file is a QualiCLIP+ prompt learner (and not a full checkpoint)."""
    path = Path(path)
    if path.is_dir() or path.suffix == ".safetensors" or not path.is_file():
        return False
    try:
        return any(str(key).startswith(PREFIX) for key in read_prompt_learner(path))
    except CheckpointError:
        return False


def with_learned_prompts(
    base: Checkpoint, learner_state: Mapping[str, object], origin: str, provenance: Mapping[str, object] | None = None
) -> Checkpoint:
    """``base`` (which must hold the text tower) with the learned prompts' features as its prompt features.

    The result scores like pyiqa's QualiCLIP+: temperature 2 and the scale exp(logit_scale) of ``base``.
    It keeps no text tower: the learned prompts are already encoded.
    """
    from qualiclip_metric.text import build_text_tower

    if base.text_state is None:
        raise CheckpointError(f"{base.origin}: encoding learned prompts needs the text tower, which it lacks")
    ctx = learner_state.get(PREFIX + "ctx")
    context_tokens = ctx.shape[-2] if isinstance(ctx, Tensor) and ctx.dim() >= 2 else CONTEXT_TOKENS
    learner = PromptLearner(build_text_tower(base.text_state, base.origin), DEFAULT_PROMPT_PAIRS, context_tokens)
    learner.load_pyiqa_state(learner_state, origin)
    with torch.no_grad():
        features = F.normalize(learner().float(), dim=-1)
    provenance = {**(provenance or {}), "prompt_learner": origin}
    checkpoint = scoring_with_prompt_features(base, features, provenance)
    checkpoint.origin = f"{base.origin} + {origin}"
    return checkpoint


def scoring_with_prompt_features(
    base: Checkpoint, features: Tensor, provenance: Mapping[str, object] | None = None
) -> Checkpoint:
    """``base``, without its text tower, scoring with learned prompt ``features`` (14, 1024) as pyiqa's
    QualiCLIP+ does: temperature 2 and the scale exp(logit_scale) of ``base``.

    The one place that sets QualiCLIP+'s scoring: the conversion and ``training/`` both use it.
    """
    logit_scale = base.image_state.get("logit_scale")
    scale = float(logit_scale.float().exp()) if logit_scale is not None else SCORE_LOGIT_SCALE
    if not math.isfinite(scale) or scale <= 0:
        raise CheckpointError(f"{base.origin}: logit_scale {scale} is not a usable positive number")
    config = replace(
        base.config,
        prompt_pairs=DEFAULT_PROMPT_PAIRS,
        temperature=TEMPERATURE,
        score_logit_scale=scale,
        files={},
        provenance={**base.config.provenance, **(provenance or {})},
    )
    return Checkpoint({**base.image_state, "prompts_features": features}, None, config, origin=base.origin)
