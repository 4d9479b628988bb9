"""Training data for Re-IQA's quality-aware encoder: chunks of distorted versions with swapped crop pairs.

One item is the *chunk* of one pristine image. For each scale (full, half) the image gets ``n_aug`` distinct
distortions from the bank at random levels, giving ``V = n_aug + 1`` versions with the pristine one. Two
``crop_size`` crops ``c1``, ``c2`` whose shared area is within the overlap bounds (10-30 %) are placed once
per scale; every version is cut at both places. Query/key pairs (Intra-Pair Image Swapping):

- pair ``j``      (``j < V``): query ``version_j(c1)``, key ``version_j(c2)``;
- pair ``V + j``:               query ``version_j(c2)``, key ``version_j(c1)`` (the same two crops, swapped).

A query's positive is its own key: the other, overlapping crop of the same distorted version (hypothesis
H1: overlapping crops of one picture have similar quality). Its negatives are the keys of earlier steps in
the queue, which hold other contents (H2) and the other distortions of the same content (H3): a chunk's
versions enter the queue together at the end of the step, so they become negatives of the next steps'
queries, as in MoCo, where the current batch's keys are never negatives of its own queries.

Every item is a function of ``(seed, epoch, index)`` alone, so resumed runs see the same data.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from qualiclip_metric.inputs import load_image
from training.degradations import DISTORTIONS, NUM_LEVELS, degrade
from training.engine import stable_seed
from training.images import usable_images
from training.qualiclip.data import sample_overlapping_crops


@dataclass(frozen=True)
class ChunkConfig:
    """How chunks are made; the defaults are the paper's choices (n_aug 11, 160 px crops, 10-30 % overlap)."""

    crop_size: int = 160
    min_overlap: float = 0.1
    max_overlap: float = 0.3
    #: Distinct distortions per version set (the pristine image makes the chunk ``n_aug + 1`` versions).
    n_aug: int = 11
    #: Bank to draw from; empty: all 24 distortions.
    distortions: tuple[str, ...] = ()
    #: Scales of the image the crops are cut from (1.0 full, 0.5 half).
    scales: tuple[float, ...] = (1.0, 0.5)

    def __post_init__(self) -> None:
        if not 0 <= self.min_overlap <= self.max_overlap < 1:
            raise ValueError(f"need 0 <= min_overlap <= max_overlap < 1, got {self.min_overlap}, {self.max_overlap}")
        if self.crop_size < 16:
            raise ValueError(f"crop_size must be at least 16, got {self.crop_size}")
        unknown = sorted(set(self.distortions) - set(DISTORTIONS))
        if unknown:
            raise ValueError(f"unknown distortions {unknown}; valid: {', '.join(DISTORTIONS)}")
        if not 0 <= self.n_aug <= len(self.distortion_names):
            raise ValueError(
                f"n_aug must be in 0..{len(self.distortion_names)} (distinct distortions), got {self.n_aug}"
            )
        if not self.scales or any(not 0 < scale <= 1 for scale in self.scales):
            raise ValueError(f"scales must be a non-empty list of values in (0, 1], got {self.scales}")

    @property
    def distortion_names(self) -> tuple[str, ...]:
        return self.distortions or tuple(DISTORTIONS)

    @property
    def versions(self) -> int:
        return self.n_aug + 1

    @property
    def pairs_per_item(self) -> int:
        """Query/key pairs of one chunk: two swapped pairs per version and scale."""
        return 2 * self.versions * len(self.scales)


def overlap_fraction(first: tuple[int, int], second: tuple[int, int], size: int) -> float:
    """Shared area of two ``size`` x ``size`` crops given by their top-left corners, as a fraction of one crop."""
    rows = max(0, size - abs(first[0] - second[0]))
    cols = max(0, size - abs(first[1] - second[1]))
    return rows * cols / size**2


def rescale(image: Tensor, scale: float, crop_size: int) -> Tensor:
    """``image`` at ``scale`` (antialiased), enlarged if needed so two overlapping crops fit (shorter side 1.5 crops).

    Two crops sharing at most 30 % of their area need an offset of at least 0.45 crop along both axes
    when placed diagonally, hence the 1.5 factor; images that small are rare with the paper's data.
    """
    height, width = image.shape[-2:]
    factor = max(scale, math.ceil(1.5 * crop_size) / min(height, width))
    if factor == 1.0:
        return image
    size = [max(1, round(height * factor)), max(1, round(width * factor))]
    resized = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=factor < 1)
    return resized[0].clamp(0, 1)


class ChunkDataset(Dataset):
    """Items ``{"query", "key": (P, 3, S, S), "pairs": [...]}`` with ``P = 2 * V * len(scales)`` pairs.

    ``pairs[p]`` describes pair ``p``: scale, version, distortion name and level (``None`` for the pristine
    version), and the query's and key's top-left corners in the image at that scale. Each version is made by
    degrading the bounding box of the two crops once (so both crops share one realisation of the distortion),
    at the resolution the network sees.
    """

    def __init__(self, images: str | os.PathLike | Sequence[str | os.PathLike], config: ChunkConfig, seed: int = 0):
        self.files: list[Path] = usable_images(images)  # rescale() enlarges small images until two crops fit
        self.config, self.seed = config, seed

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, object]:
        """``dataset[epoch, index]`` (what the engine asks) or ``dataset[index]`` (epoch 0)."""
        epoch, index = key if isinstance(key, tuple) else (0, key)
        config, size = self.config, self.config.crop_size
        generator = torch.Generator().manual_seed(stable_seed(self.seed, epoch, index))
        pristine = load_image(self.files[index])
        names = config.distortion_names
        queries: list[Tensor] = []
        keys: list[Tensor] = []
        pairs: list[dict[str, object]] = []
        for scale in config.scales:
            image = rescale(pristine, scale, size)
            first, second = sample_overlapping_crops(
                *image.shape[-2:], size, config.min_overlap, config.max_overlap, generator
            )
            top, left = min(first[0], second[0]), min(first[1], second[1])
            bottom, right = max(first[0], second[0]) + size, max(first[1], second[1]) + size
            region = image[None, :, top:bottom, left:right]
            chosen = [names[i] for i in torch.randperm(len(names), generator=generator)[: config.n_aug].tolist()]
            levels = torch.randint(1, NUM_LEVELS + 1, (config.n_aug,), generator=generator).tolist()
            plan: list[tuple[str | None, int | None]] = [(None, None), *zip(chosen, levels, strict=True)]
            versions = [region if name is None else degrade(region, name, level, generator) for name, level in plan]
            crops = [
                [v[0, :, r - top : r - top + size, c - left : c - left + size] for r, c in (first, second)]
                for v in versions
            ]
            for swapped in (False, True):
                for number, ((name, level), (one, two)) in enumerate(zip(plan, crops, strict=True)):
                    queries.append(two if swapped else one)
                    keys.append(one if swapped else two)
                    pairs.append(
                        {
                            "scale": scale,
                            "version": number,
                            "distortion": name,
                            "level": level,
                            "query_corner": second if swapped else first,
                            "key_corner": first if swapped else second,
                        }
                    )
        return {"query": torch.stack(queries), "key": torch.stack(keys), "pairs": pairs, "index": index}


def collate_chunks(items: list[dict[str, object]]) -> dict[str, Tensor]:
    """Chunks concatenated pair-wise: ``{"query", "key": (B * P, 3, S, S)}``."""
    return {
        "query": torch.cat([item["query"] for item in items]),
        "key": torch.cat([item["key"] for item in items]),
    }
