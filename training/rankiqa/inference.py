"""Scoring with a trained RankIQA model: the mean score over random crops, as the paper tests.

The crops of an image depend only on the seed (not on its position in a batch or a file list), so an
image gets the same score however it is scored.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from qualiclip_metric.batch import FileScore
from training.rankiqa.data import random_crops
from training.rankiqa.model import CONFIG_FILE, ModelConfig, RankIQANet, build_model
from training.score_files import score_paths


@dataclass(frozen=True)
class TestConfig:
    """Test-time procedure: the mean over ``crops`` random ``crop_size`` crops (30 of 224 in the paper)."""

    crops: int = 30
    crop_size: int = 224
    #: Crops scored per forward pass.
    batch_size: int = 30
    seed: int = 0

    def __post_init__(self) -> None:
        if self.crops < 1 or self.crop_size < 32 or self.batch_size < 1:
            raise ValueError("crops and batch_size must be positive and crop_size at least 32")


class RankIQA(nn.Module):
    """A trained network with its test procedure; ``model(images)`` gives one score per image, higher is better.

    ``target_mean`` and ``target_std`` undo the target normalisation of stage 2, so scores come in MOS units.
    """

    def __init__(
        self,
        net: RankIQANet,
        test: TestConfig | None = None,
        target_mean: float = 0.0,
        target_std: float = 1.0,
    ) -> None:
        super().__init__()
        self.net, self.test = net.eval(), test or TestConfig()
        self.target_mean, self.target_std = float(target_mean), float(target_std)

    @classmethod
    def from_pretrained(
        cls, weights: str | os.PathLike, device: str | torch.device = "cpu", **test_overrides: Any
    ) -> RankIQA:
        """Load an export directory (``model.safetensors`` and ``config.json``) written by the trainer."""
        directory = Path(weights).expanduser()
        config_path = directory / CONFIG_FILE if directory.is_dir() else directory.with_name(CONFIG_FILE)
        saved = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
        net = build_model(
            ModelConfig(init=str(directory), arch=saved.get("arch", "vgg16"), fc_width=saved.get("fc_width", 4096))
        )
        test = TestConfig(**{**saved.get("test", {}), **test_overrides})
        return cls(net, test, saved.get("target_mean", 0.0), saved.get("target_std", 1.0)).to(device)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @torch.no_grad()
    def score_image(self, image: Tensor) -> float:
        """The mean network output over the test crops of one (3, H, W) image in [0, 1]."""
        generator = torch.Generator().manual_seed(self.test.seed)
        crops = random_crops(image.float().cpu(), self.test.crop_size, self.test.crops, generator)
        outputs = [self.net(chunk.to(self.device)).float().cpu() for chunk in crops.split(self.test.batch_size)]
        return float(torch.cat(outputs).mean()) * self.target_std + self.target_mean

    def forward(self, images: Tensor | Sequence[Tensor]) -> Tensor:
        """Scores (N,) of (N, 3, H, W), (3, H, W), or a list of (3, H, W) of any sizes."""
        if isinstance(images, Tensor):
            images = images[None] if images.ndim == 3 else images
            if images.ndim != 4 or images.shape[1] != 3:
                raise ValueError(f"expected images shaped (N, 3, H, W) or (3, H, W), got {tuple(images.shape)}")
        return torch.tensor([self.score_image(image) for image in images])

    def score_files(self, paths: Iterable[str | os.PathLike]) -> list[FileScore]:
        """One row per path, in order; a file that cannot be read gets its error instead of a score."""
        return list(score_paths(paths, self.score_image))
