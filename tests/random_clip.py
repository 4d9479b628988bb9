"""A random-weight CLIP RN50 that scores like a trained one, for the tests and the benchmarks.

Built with open_clip directly (not with the code under test): random weights, residual branches switched
on, BatchNorm statistics calibrated on generated images so that scores spread out, ``logit_scale`` = ln 100,
and prompt features encoded by open_clip's own text tower. Nothing here downloads.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from qualiclip_metric.config import DEFAULT_PROMPT_PAIRS
from qualiclip_metric.text import quiet_logging

SEED = 1234
PROMPT_TEXTS = [text for pair in DEFAULT_PROMPT_PAIRS for text in pair]


def make_images(n: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Varied test images in [0, 1]: smooth colour fields with noise and blur of random strength."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 5, generator=g)
    smooth = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    detail = torch.rand(n, 3, height, width, generator=g) - 0.5
    strength = torch.rand(n, 1, 1, 1, generator=g) * 0.6
    return (smooth + strength * detail).clamp(0, 1)


def build_random_clip(
    seed: int = SEED, attention_query_scale: float = 1.0
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """A random CLIP RN50-quickgelu state dict (OpenAI key names) and its 14 prompt features.

    ``attention_query_scale`` scales the attention pool's query projection: unscaled, its attention logits
    reach 1e4 (a trained CLIP's stay in the tens), which makes fp32 scores of some images depend on the
    summation order by 1e-4 in any implementation; the speed benchmarks' parity checks use 1e-3.
    """
    import open_clip

    torch.manual_seed(seed)
    with quiet_logging():
        clip = open_clip.create_model("RN50-quickgelu", pretrained=None)
    with torch.no_grad():
        for name, param in clip.visual.named_parameters():
            if name.endswith("bn3.weight"):  # open_clip zero-inits these; make residual branches count
                param.normal_(0.5, 0.1)
            if name.startswith("attnpool.q_proj."):
                param.mul_(attention_query_scale)
        clip.logit_scale.fill_(math.log(100.0))
    # Calibrate BatchNorm running statistics so activations, and hence scores, are well spread.
    for module in clip.visual.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    clip.visual.train()
    with torch.no_grad():
        for index in range(4):
            clip.visual(make_images(4, 224, 224, seed=100 + index))
    clip.eval()
    with quiet_logging(), torch.no_grad():
        tokenizer = open_clip.get_tokenizer("RN50-quickgelu")
        prompts = F.normalize(clip.encode_text(tokenizer(PROMPT_TEXTS)), dim=-1)
    return {k: v.clone() for k, v in clip.state_dict().items()}, prompts


def official_state(clip_state: dict[str, torch.Tensor], prompts: torch.Tensor) -> dict[str, torch.Tensor]:
    """The official/pyiqa ``qualiclip.pth`` layout: ``prompts_features`` plus ``clip_model.<key>``."""
    return {"prompts_features": prompts, **{f"clip_model.{k}": v for k, v in clip_state.items()}}


def build_random_tower(
    seed: int = SEED, attention_query_scale: float = 1.0
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Like :func:`build_random_clip` without open_clip: the image tower only, and random prompt features.

    For machines where open_clip is not installed (the bare GPU machine the device benchmarks run on): the
    tower is the package's own ``build_image_tower`` (OpenAI's key names), randomised and calibrated as
    above; the 14 prompt features are random unit vectors, since there is no text tower to encode them.
    Not for parity tests, which need a network built independently of the code under test.
    """
    from qualiclip_metric.model import build_image_tower

    torch.manual_seed(seed)
    visual = build_image_tower()
    with torch.no_grad():
        for name, param in visual.named_parameters():
            if name.endswith("bn3.weight"):
                param.normal_(0.5, 0.1)
            if name.startswith("attnpool.q_proj."):
                param.mul_(attention_query_scale)
    for module in visual.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    visual.train()
    with torch.no_grad():
        for index in range(4):
            visual(make_images(4, 224, 224, seed=100 + index))
    visual.eval()
    state = {f"visual.{k}": v.clone() for k, v in visual.state_dict().items()}
    state["logit_scale"] = torch.tensor(math.log(100.0))
    prompts = F.normalize(torch.randn(len(PROMPT_TEXTS), 1024, generator=torch.Generator().manual_seed(seed)), dim=-1)
    return state, prompts
