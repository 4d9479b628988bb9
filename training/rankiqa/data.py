"""RankIQA's training data: ranked sets of synthetically degraded crops (stage 1) and MOS crops (stage 2).

Every item is a function of ``(seed, epoch, index)`` alone, so a run resumed at any step sees exactly the
data it would have seen.

Stage 1 styles (the degradations come from ``training.degradations``, KADID-10k's 24 types at 5 levels):

- ``live``: LIVE's four distortions (Gaussian blur, white noise, JPEG, JPEG 2000) at the 5 levels, plus the
  pristine crop as the best rank: 6 ranks. Note that the bank's Gaussian blur level 1 (sigma 0.1) leaves an
  image unchanged to float precision, so that one pair per blur group is a tie that the hinge cannot resolve
  (it adds a constant ``margin`` and no gradient).
- ``tid2013``: the TID2013 types the bank reproduces, at 4 levels (2..5 by default, so no level is
  a near-copy of the pristine crop), plus the pristine crop. :data:`TID2013_TO_BANK` lists all 24 TID2013
  types with the bank distortion used, or ``None`` for those left out.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from qualiclip_metric.inputs import load_image
from training.degradations import DISTORTIONS, NUM_LEVELS, degrade
from training.engine import stable_seed

LIVE_DISTORTIONS = ("gaublur", "whitenoise", "jpeg", "jpeg2000")

#: TID2013's 24 distortion types (in its numbering) and the bank distortion standing in for each, or None.
TID2013_TO_BANK: dict[str, str | None] = {
    "01 additive Gaussian noise": "whitenoise",
    "02 additive noise stronger in colour components": "whitenoiseCC",  # YCbCr noise, chroma included
    "03 spatially correlated noise": None,
    "04 masked noise": None,
    "05 high-frequency noise": None,
    "06 impulse noise": "impulsenoise",
    "07 quantization noise": "quantization",
    "08 Gaussian blur": "gaublur",
    "09 image denoising": None,
    "10 JPEG compression": "jpeg",
    "11 JPEG 2000 compression": "jpeg2000",
    "12 JPEG transmission errors": None,
    "13 JPEG 2000 transmission errors": None,
    "14 non-eccentricity pattern noise": "noneccpatch",
    "15 local block-wise distortions": "colorblock",
    "16 mean shift": None,  # the bank's meanshift alternates sign at equal strength: no ranking
    "17 contrast change": "nonlincontrchange",  # contrast decrease only (the bank's linear change alternates)
    "18 change of colour saturation": "colorsat1",
    "19 multiplicative Gaussian noise": "multnoise",
    "20 comfort noise": None,
    "21 lossy compression of noisy images": None,
    "22 colour quantization with dither": None,  # the bank quantizes without dither (used for 07)
    "23 chromatic aberrations": "colorshift",  # a shifted colour channel
    "24 sparse sampling and reconstruction": None,
}
TID2013_DISTORTIONS = tuple(name for name in TID2013_TO_BANK.values() if name is not None)

STYLE_DEFAULTS: dict[str, tuple[tuple[str, ...], tuple[int, ...]]] = {
    "live": (LIVE_DISTORTIONS, (1, 2, 3, 4, 5)),
    "tid2013": (TID2013_DISTORTIONS, (2, 3, 4, 5)),
}


@dataclass(frozen=True)
class RankDataConfig:
    """Stage 1: ranked sets from a folder of pristine images."""

    #: A folder tree of pristine images (the paper: Waterloo Exploration's 4,744 images for LIVE, and
    #: the same generator with TID2013's types for TID2013).
    images: str = "data/pristine"
    style: Literal["live", "tid2013"] = "live"
    #: Overrides of the style's distortions and levels (empty: the style's).
    distortions: tuple[str, ...] = ()
    levels: tuple[int, ...] = ()
    #: The undistorted crop takes part as the best rank.
    include_pristine: bool = True
    crop_size: int = 224
    #: Stage 1 trains every layer at the base learning rate in the paper.
    head_lr_multiplier: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.distortions) - set(DISTORTIONS))
        if unknown:
            raise ValueError(f"unknown distortions {unknown}; valid: {', '.join(DISTORTIONS)}")
        if any(not 1 <= level <= NUM_LEVELS for level in self.levels) or list(self.levels) != sorted(set(self.levels)):
            raise ValueError(f"levels must be increasing and within 1..{NUM_LEVELS}, got {self.levels}")
        if len(self.level_indices) + self.include_pristine < 2:
            raise ValueError("a ranked set needs at least two images")
        if self.crop_size < 32 or self.head_lr_multiplier <= 0:
            raise ValueError("crop_size must be at least 32 and head_lr_multiplier positive")

    @property
    def distortion_names(self) -> tuple[str, ...]:
        return self.distortions or STYLE_DEFAULTS[self.style][0]

    @property
    def level_indices(self) -> tuple[int, ...]:
        return self.levels or STYLE_DEFAULTS[self.style][1]


def fit_crop(image: Tensor, size: int) -> Tensor:
    """``image`` (3, H, W) upscaled (bilinear) so that its shorter side is at least ``size``."""
    shorter = min(image.shape[-2:])
    if shorter >= size:
        return image
    target = [max(size, math.ceil(side * size / shorter)) for side in image.shape[-2:]]
    return F.interpolate(image[None], size=target, mode="bilinear", align_corners=False)[0].clamp(0, 1)


def random_crops(image: Tensor, size: int, count: int, generator: torch.Generator) -> Tensor:
    """``count`` random ``size`` x ``size`` crops of (3, H, W) as (count, 3, size, size)."""
    image = fit_crop(image, size)
    height, width = image.shape[-2:]
    tops = torch.randint(0, height - size + 1, (count,), generator=generator).tolist()
    lefts = torch.randint(0, width - size + 1, (count,), generator=generator).tolist()
    return torch.stack([image[:, t : t + size, s : s + size] for t, s in zip(tops, lefts, strict=True)])


class RankedDataset(Dataset):
    """One item per (image, distortion): ``{"images": (R, 3, S, S), "ranks": (R,), "distortion": name}``.

    Rank 0 is the best image (the pristine crop when included), rank R - 1 the most degraded. An epoch
    visits every (image, distortion) once, each with a fresh random crop.
    """

    def __init__(self, files: Sequence[str | os.PathLike], config: RankDataConfig, seed: int = 0) -> None:
        self.files = [Path(f) for f in files]
        if not self.files:
            raise ValueError("the ranked dataset needs at least one image")
        self.config, self.seed = config, seed
        self.distortions = config.distortion_names

    def __len__(self) -> int:
        return len(self.files) * len(self.distortions)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """``dataset[index]`` (epoch 0) or ``dataset[epoch, index]`` (what the training engine asks)."""
        epoch, index = key if isinstance(key, tuple) else (0, key)
        file_index, distortion_index = divmod(index, len(self.distortions))
        name = self.distortions[distortion_index]
        generator = torch.Generator().manual_seed(stable_seed(self.seed, epoch, index))
        crop = random_crops(load_image(self.files[file_index]), self.config.crop_size, 1, generator)
        versions = [crop] if self.config.include_pristine else []
        versions.extend(degrade(crop, name, level, generator) for level in self.config.level_indices)
        images = torch.cat(versions)
        return {
            "images": images,
            "ranks": torch.arange(len(images)),
            "distortion": name,
            "file": str(self.files[file_index]),
        }


def collate_ranked(items: list[dict[str, Any]]) -> dict[str, Tensor]:
    """All sets of a batch as one flat batch; ``groups`` says which set (image and distortion) each image is from."""
    return {
        "images": torch.cat([item["images"] for item in items]),
        "ranks": torch.cat([item["ranks"] for item in items]),
        "groups": torch.cat([torch.full((len(item["ranks"]),), k) for k, item in enumerate(items)]),
    }


@dataclass(frozen=True)
class MOSDataConfig:
    """Stage 2: an image folder and an ``image,mos`` CSV; training uses one split's training part."""

    images: str = "data/clive/images"
    scores: str = "data/clive/mos.csv"
    #: Train on the training part of this split of ``qualiclip_metric.evaluation.dataset_splits`` with
    #: ``Protocol(splits, test_fraction, split_seed)`` (by reference image when the CSV names one) and test on the rest;
    #: None trains on every image.
    split_index: int | None = 0
    splits: int = 10
    test_fraction: float = 0.2
    split_seed: int = 0
    crop_size: int = 224
    #: Regress (MOS - mean) / std of the training part; the export maps scores back to MOS units.
    normalize_targets: bool = True
    #: The paper trains the fully connected layers at 10x the base learning rate in stage 2.
    head_lr_multiplier: float = 10.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.split_index is not None and not 0 <= self.split_index < self.splits:
            raise ValueError(f"split_index must be in 0..{self.splits - 1}, got {self.split_index}")
        if self.crop_size < 32 or self.head_lr_multiplier <= 0:
            raise ValueError("crop_size must be at least 32 and head_lr_multiplier positive")


class MOSDataset(Dataset):
    """Items ``{"image": (3, S, S), "target": ()}``: a fresh random crop of a training image per epoch."""

    def __init__(self, paths: Sequence[Path], targets: Sequence[float], crop_size: int, seed: int = 0) -> None:
        if len(paths) != len(targets) or not paths:
            raise ValueError(f"need as many targets as images (at least one), got {len(paths)} and {len(targets)}")
        self.paths, self.targets = list(paths), torch.as_tensor(list(targets), dtype=torch.float32)
        self.crop_size, self.seed = crop_size, seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Tensor]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        generator = torch.Generator().manual_seed(stable_seed(self.seed, epoch, index))
        crop = random_crops(load_image(self.paths[index]), self.crop_size, 1, generator)[0]
        return {"image": crop, "target": self.targets[index]}


def collate_mos(items: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    return {"images": torch.stack([i["image"] for i in items]), "targets": torch.stack([i["target"] for i in items])}
