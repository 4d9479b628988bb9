"""Training data for QualiCLIP: two overlapping crops of a pristine image, degraded at increasing levels.

Every item is a function of ``(seed, epoch, index)`` alone, so a run resumed at any step sees exactly
the data it would have seen.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from qualiclip_metric.inputs import MIN_IMAGE_SIDE, load_image
from training.degradations import DISTORTIONS, GROUPS, NUM_LEVELS, degrade
from training.engine import stable_seed
from training.images import usable_images

#: Distortions whose KADID level tables do not grow in strength level by level (meanshift alternates
#: sign at equal magnitude; lincontrchange's 0 is already a contrast boost and its levels alternate),
#: so they cannot teach a ranking. Left out unless named explicitly.
NOT_MONOTONIC = ("meanshift", "lincontrchange")


@dataclass(frozen=True)
class CropPairConfig:
    """How training items are made (the paper fixes none of these numbers: they are our defaults)."""

    crop_size: int = 224
    #: Fraction of a crop's area shared with the other crop.
    min_overlap: float = 0.1
    max_overlap: float = 0.5
    #: Number of increasing degradation levels L (spread over the 5 KADID levels).
    levels: int = 5
    #: Distortions to sample from; empty means all except :data:`NOT_MONOTONIC`.
    distortions: tuple[str, ...] = ()
    #: Distortions applied together (from distinct groups), all at the same level; 1 is a single one.
    composed: int = 1

    def __post_init__(self) -> None:
        if self.crop_size < MIN_IMAGE_SIDE:
            raise ValueError(f"crop_size must be at least {MIN_IMAGE_SIDE}, got {self.crop_size}")
        if not 0 <= self.min_overlap <= self.max_overlap < 1:
            raise ValueError(f"need 0 <= min_overlap <= max_overlap < 1, got {self.min_overlap}, {self.max_overlap}")
        if not 2 <= self.levels <= NUM_LEVELS:
            raise ValueError(f"levels must be in 2..{NUM_LEVELS}, got {self.levels}")
        unknown = sorted(set(self.distortions) - set(DISTORTIONS))
        if unknown:
            raise ValueError(f"unknown distortions {unknown}; valid: {', '.join(DISTORTIONS)}")
        if not 1 <= self.composed <= len(GROUPS):
            raise ValueError(f"composed must be in 1..{len(GROUPS)}, got {self.composed}")

    @property
    def distortion_names(self) -> tuple[str, ...]:
        return self.distortions or tuple(name for name in DISTORTIONS if name not in NOT_MONOTONIC)

    @property
    def level_indices(self) -> tuple[int, ...]:
        """The KADID levels used, evenly spread from 1 to 5 (all five when ``levels`` is 5)."""
        step = (NUM_LEVELS - 1) / (self.levels - 1)
        return tuple(1 + round(i * step) for i in range(self.levels))


def fitted_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) of an image upscaled (if needed) so that its shorter side holds a ``size`` crop."""
    shorter = min(height, width)
    if shorter >= size:
        return height, width
    scale = size / shorter
    return max(size, round(height * scale)), max(size, round(width * scale))


def crop_pair_fits(height: int, width: int, size: int, max_overlap: float) -> bool:
    """Whether two ``size`` crops of a ``height`` x ``width`` image can share at most ``max_overlap``."""
    if height < size or width < size:
        return False
    rows = max(1, size - (height - size))  # the fewest rows the two crops can share
    cols = max(1, size - (width - size))
    return rows * cols / size**2 <= max_overlap


def sample_overlapping_crops(
    height: int, width: int, size: int, min_overlap: float, max_overlap: float, generator: torch.Generator
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Top-left corners of two ``size`` x ``size`` crops whose shared area fraction is within the bounds."""
    if height < size or width < size:
        raise ValueError(f"image of {height} x {width} is smaller than the {size} x {size} crop")
    for _ in range(1000):
        top = int(torch.randint(0, height - size + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - size + 1, (1,), generator=generator))
        low = max(0, top - size + 1), max(0, left - size + 1)
        high = min(height - size, top + size - 1), min(width - size, left + size - 1)
        other_top = int(torch.randint(low[0], high[0] + 1, (1,), generator=generator))
        other_left = int(torch.randint(low[1], high[1] + 1, (1,), generator=generator))
        shared = (size - abs(top - other_top)) * (size - abs(left - other_left)) / size**2
        if min_overlap <= shared <= max_overlap:
            return (top, left), (other_top, other_left)
    raise ValueError(
        f"could not place two {size}-pixel crops with overlap in [{min_overlap}, {max_overlap}] in {height} x {width}"
    )


class CropPairDataset(Dataset):
    """Items ``{"images": (2, L, 3, S, S), "distortions": [...], "levels": (...), "boxes": (...)}``.

    The two crops get the same distortion(s) at each of the L increasing levels; random parts of a
    distortion (noise, positions) are drawn independently per crop. Images smaller than the crop are
    upscaled (bilinear) so their shorter side fits it.
    """

    def __init__(self, images: str | os.PathLike | Sequence[str | os.PathLike], config: CropPairConfig, seed: int = 0):
        size, overlap = config.crop_size, config.max_overlap
        self.files: list[Path] = usable_images(
            images,
            fits=lambda width, height: crop_pair_fits(*fitted_size(height, width, size), size, overlap),
            requirement=f"need two {size}-pixel crops sharing at most {overlap:.0%} of their area",
        )
        self.config = config
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the crops and distortions of an epoch (call before iterating it)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.files)

    def _pristine(self, index: int) -> Tensor:
        image = load_image(self.files[index])
        size = fitted_size(*image.shape[-2:], self.config.crop_size)
        if size != tuple(image.shape[-2:]):
            image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0].clamp(0, 1)
        return image

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, object]:
        """``dataset[index]`` in the current epoch, or ``dataset[epoch, index]`` (what the training engine asks)."""
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        config = self.config
        generator = torch.Generator().manual_seed(stable_seed(self.seed, epoch, index))
        image = self._pristine(index)
        size = config.crop_size
        corners = sample_overlapping_crops(*image.shape[-2:], size, config.min_overlap, config.max_overlap, generator)
        crops = torch.stack([image[:, top : top + size, left : left + size] for top, left in corners])
        names = list(config.distortion_names)
        chosen: list[str] = []
        for position in torch.randperm(len(names), generator=generator).tolist():
            if all(DISTORTIONS[names[position]].group != DISTORTIONS[name].group for name in chosen):
                chosen.append(names[position])
            if len(chosen) == config.composed:
                break
        degraded = []
        for level in config.level_indices:
            batch = crops
            for name in chosen:
                batch = degrade(batch, name, level, generator)
            degraded.append(batch)
        return {
            "images": torch.stack(degraded, dim=1),  # (2 crops, L levels, 3, S, S)
            "distortions": chosen,
            "levels": config.level_indices,
            "boxes": tuple((top, left, size, size) for top, left in corners),
        }


def collate_crop_pairs(items: list[dict[str, object]]) -> torch.Tensor:
    """The images of a list of items as one (B, 2, L, 3, S, S) batch."""
    return torch.stack([item["images"] for item in items])
