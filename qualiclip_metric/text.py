"""CLIP's text tower: features of custom antonym prompts and of learned (QualiCLIP+) prompts.

Only needed when prompts change; scoring with stored prompt features never builds it. Uses open_clip's
``RN50-quickgelu`` text tower (the QuickGELU one, as in OpenAI's CLIP) and its bundled BPE tokenizer, so
this works offline.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qualiclip_metric.config import ARCHITECTURE, PromptPair, validate_prompt_pairs
from qualiclip_metric.errors import CheckpointError


@contextlib.contextmanager
def quiet_logging(level: int = logging.ERROR) -> Iterator[None]:
    """Raise the root logger's level to ``level`` inside the block, then restore it.

    open_clip logs through the root logger: a warning for every model built without weights, and a line
    each time a tokenizer parses its vocabulary.
    """
    logger = logging.getLogger()
    saved = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(saved)


def create_clip(pretrained: str | None = None) -> nn.Module:
    """open_clip's CLIP RN50 (QuickGELU, as OpenAI's), without the warnings open_clip logs for it.

    Args:
        pretrained: open_clip's name of the weights (``"openai"`` downloads them), or None for random ones.
    """
    import open_clip

    with quiet_logging():
        return open_clip.create_model(ARCHITECTURE, pretrained=pretrained)


@functools.cache
def _tokenizer() -> Any:
    """open_clip's BPE tokenizer, built once (building it parses the vocabulary and logs each time)."""
    import open_clip

    with quiet_logging(logging.WARNING):
        return open_clip.get_tokenizer(ARCHITECTURE)


def tokenize(texts: Sequence[str]) -> Tensor:
    """(T, 77) CLIP tokens; a text that would be cut is refused."""
    tokenizer = _tokenizer()
    for text in texts:
        tokens = len(tokenizer.encode(text)) + 2  # with the start and end tokens
        if tokens > tokenizer.context_length:
            raise ValueError(
                f"prompt {text!r} is {tokens} tokens long; CLIP reads at most {tokenizer.context_length} "
                "(including start and end), so it would be cut: shorten it"
            )
    return tokenizer(list(texts))


def token_count(text: str) -> int:
    """Tokens of ``text`` alone, without the start and end tokens."""
    return len(_tokenizer().encode(text))


def build_text_tower(text_state: Mapping[str, Tensor], origin: str = "text tower") -> nn.Module:
    """open_clip's CLIP without its image tower, holding ``text_state``, frozen and in evaluation mode."""
    clip = create_clip()
    del clip.visual
    expected = {k: v.shape for k, v in clip.state_dict().items() if k != "logit_scale"}
    missing = sorted(set(expected) - set(text_state))
    wrong = [k for k in expected if k in text_state and text_state[k].shape != expected[k]]
    if missing or wrong:
        raise CheckpointError(f"{origin}: incomplete text tower: missing {missing[:4]}, wrong shapes {wrong[:4]}")
    not_finite = sorted(k for k in expected if not torch.isfinite(text_state[k]).all())
    if not_finite:
        raise CheckpointError(f"{origin}: the text tower holds NaN or Inf values ({', '.join(not_finite[:4])})")
    clip.load_state_dict({k: text_state[k] for k in expected}, strict=False)
    return clip.eval().requires_grad_(False)


def encode_embeddings(tower: nn.Module, embeddings: Tensor, end_index: Tensor) -> Tensor:
    """Text features (T, 1024), not normalized, of token embeddings (T, 77, 512).

    The same computation as CLIP's ``encode_text`` after its embedding lookup, so learned embeddings
    (QualiCLIP+'s context tokens) go through exactly what words go through. ``end_index`` is the
    position of each sequence's end token, whose output is the text feature. The causal mask keeps every
    position from seeing later ones, so the positions after the last end token are left out: they cannot
    change the features, and the 14 QualiCLIP+ prompts end before position 30 of 77.
    """
    length = int(end_index.max()) + 1
    x = embeddings[:, :length] + tower.positional_embedding[:length].to(embeddings.dtype)
    x = tower.ln_final(tower.transformer(x, attn_mask=tower.attn_mask[:length, :length]))
    return x[torch.arange(x.shape[0], device=x.device), end_index] @ tower.text_projection


def encode_prompt_pairs(
    pairs: Sequence[PromptPair], text_state: Mapping[str, Tensor], origin: str = "text tower"
) -> Tensor:
    """L2-normalized (2P, 1024) features, positive then negative prompt of every pair."""
    pairs = validate_prompt_pairs(pairs)
    tokens = tokenize([text for pair in pairs for text in pair])
    tower = build_text_tower(text_state, origin)
    with torch.inference_mode():
        # the end token has the highest id, so each sequence's argmax is its end position
        features = encode_embeddings(tower, tower.token_embedding(tokens), tokens.argmax(dim=-1))
    return F.normalize(features.float(), dim=-1).clone()
