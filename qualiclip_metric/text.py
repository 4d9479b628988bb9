"""Text features for custom antonym prompts, from CLIP's text tower (only needed for custom prompts)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from qualiclip_metric.config import ARCHITECTURE, PromptPair, validate_prompt_pairs
from qualiclip_metric.errors import CheckpointError


def encode_prompt_pairs(
    pairs: Sequence[PromptPair], text_state: Mapping[str, Tensor], origin: str = "text tower"
) -> Tensor:
    """L2-normalized (2P, 1024) features, positive then negative prompt of every pair.

    Uses open_clip's ``RN50-quickgelu`` text tower (the QuickGELU one, as in OpenAI's CLIP) and its
    bundled BPE tokenizer, so this works offline.
    """
    import open_clip

    pairs = validate_prompt_pairs(pairs)
    tokenizer = open_clip.get_tokenizer(ARCHITECTURE)
    texts = [text for pair in pairs for text in pair]
    for text in texts:
        tokens = len(tokenizer.encode(text)) + 2  # with the start and end tokens
        if tokens > tokenizer.context_length:
            raise ValueError(
                f"prompt {text!r} is {tokens} tokens long; CLIP reads at most {tokenizer.context_length} "
                "(including start and end), so it would be cut: shorten it"
            )
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)  # open_clip logs a warning for every model built without weights
    try:
        clip = open_clip.create_model(ARCHITECTURE, pretrained=None)
    finally:
        logger.setLevel(level)
    del clip.visual
    expected = {k: v.shape for k, v in clip.state_dict().items() if not k.startswith("visual.") and k != "logit_scale"}
    missing = sorted(set(expected) - set(text_state))
    wrong = [k for k in expected if k in text_state and text_state[k].shape != expected[k]]
    if missing or wrong:
        raise CheckpointError(f"{origin}: incomplete text tower: missing {missing[:4]}, wrong shapes {wrong[:4]}")
    clip.load_state_dict({k: text_state[k] for k in expected}, strict=False)
    clip.eval()
    with torch.inference_mode():
        features = clip.encode_text(tokenizer(texts))
    return F.normalize(features.float(), dim=-1).clone()
