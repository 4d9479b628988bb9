"""Validation shared by the trainers: does a score rank synthetic degradations, and does it agree with people?

Both checks take a score function ``(N, 3, H, W) in [0, 1] -> (N,)``, higher meaning better, so they
serve every model family the same way.

- Synthetic ranking: held-out pristine images, each degraded by every distortion at the five levels with
  a fixed seed; for each (image, distortion) the SRCC between score and level (negated, so 1 is a perfect
  ranking); reported as the mean over all of them and per distortion.
- IQA dataset: SRCC/PLCC between scores and subjective scores on an image folder and a score CSV.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from qualiclip_metric.datasets import IQADataset, read_csv_dataset
from qualiclip_metric.errors import ImageLoadError
from qualiclip_metric.evaluation import correlations
from qualiclip_metric.inputs import load_image, resize_longer_side
from training.degradations import NUM_LEVELS, degrade
from training.engine import stable_seed
from training.errors import TrainingError
from training.images import usable_images

log = logging.getLogger(__name__)
ScoreFunction = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class ValidationConfig:
    """Held-out checks run during and after training."""

    #: Pristine images kept out of training (a seeded choice among the training files) for the ranking check.
    holdout: int = 8
    #: Side of the centre crop the ranking check degrades.
    crop_size: int = 224
    #: Distortions of the ranking check; empty: those the training data uses.
    distortions: tuple[str, ...] = ()
    #: An IQA dataset: image folder and score CSV (``image,mos`` or a pyiqa ``meta_info`` file).
    iqa_images: str | None = None
    iqa_scores: str | None = None
    #: Score a fixed random subset of this many images (None: all).
    iqa_max_images: int | None = None
    #: Downscale the longer side to this size first (None: full resolution, as the official scorer).
    iqa_max_size: int | None = None
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.iqa_images is None) != (self.iqa_scores is None):
            raise ValueError("iqa_images and iqa_scores go together")
        if self.holdout < 0 or self.crop_size < 32:
            raise ValueError("holdout must be non-negative and crop_size at least 32")


def pristine_split(images: str, holdout: int, seed: int, what: str = "data.images") -> tuple[list[Path], list[Path]]:
    """(training files, held-out files) of the readable images of the tree ``images`` (see :func:`usable_images`)."""
    return split_holdout(usable_images(images, what=what), holdout, seed)


def split_holdout(files: Sequence[Path], count: int, seed: int) -> tuple[list[Path], list[Path]]:
    """(training files, held-out files): a seeded choice of ``count`` files, both lists in file order."""
    if count >= len(files):
        raise TrainingError(f"cannot hold out {count} of {len(files)} images and still train")
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed)).tolist()
    held = set(order[:count])
    return [f for i, f in enumerate(files) if i not in held], [f for i, f in enumerate(files) if i in held]


def centre_crop(image: Tensor, size: int) -> Tensor:
    """A ``size`` x ``size`` centre crop of (3, H, W); smaller images are first upscaled to fit."""
    shorter = min(image.shape[-2:])
    if shorter < size:
        scale = size / shorter
        target = [max(size, math.ceil(side * scale)) for side in image.shape[-2:]]
        image = F.interpolate(image[None], size=target, mode="bilinear", align_corners=False)[0].clamp(0, 1)
    top, left = (image.shape[-2] - size) // 2, (image.shape[-1] - size) // 2
    return image[:, top : top + size, left : left + size]


def _scores(score: ScoreFunction, images: Tensor, batch_size: int) -> Tensor:
    return torch.cat([score(chunk).float().cpu() for chunk in images.split(batch_size)])


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import stats

    if np.ptp(a) == 0:  # a constant score ranks nothing
        return 0.0
    return float(stats.spearmanr(a, b).statistic)


def synthetic_ranking(
    score: ScoreFunction,
    files: Sequence[Path],
    distortions: Sequence[str],
    *,
    crop_size: int = 224,
    seed: int = 0,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Mean SRCC between score and degradation level over every (image, distortion), and per distortion."""
    if not files or not distortions:
        raise ValueError("the ranking check needs at least one image and one distortion")
    levels = np.arange(1, NUM_LEVELS + 1)
    per_distortion: dict[str, list[float]] = {name: [] for name in distortions}
    for image_index, file in enumerate(files):
        crop = centre_crop(load_image(file), crop_size)[None]
        degraded = []
        for name in distortions:
            generator = torch.Generator().manual_seed(stable_seed(seed, image_index, name))
            degraded.extend(degrade(crop, name, level, generator) for level in levels.tolist())
        values = _scores(score, torch.cat(degraded).to(device), batch_size).numpy()
        for position, name in enumerate(distortions):
            chunk = values[position * NUM_LEVELS : (position + 1) * NUM_LEVELS]
            per_distortion[name].append(_spearman(chunk, -levels))
    result = {"synthetic_srcc": float(np.mean([v for values in per_distortion.values() for v in values]))}
    result.update({f"synthetic_srcc/{name}": float(np.mean(values)) for name, values in per_distortion.items()})
    return result


def iqa_subset(dataset: IQADataset, max_images: int | None, seed: int) -> tuple[list[Path], np.ndarray]:
    """All images, or a fixed seeded subset of ``max_images`` of them (in file order)."""
    if max_images is None or max_images >= len(dataset):
        return list(dataset.paths), dataset.scores
    chosen = np.sort(np.random.default_rng(seed).permutation(len(dataset))[:max_images])
    return [dataset.paths[i] for i in chosen], dataset.scores[chosen]


def iqa_correlations(
    score: ScoreFunction,
    dataset: IQADataset,
    *,
    max_images: int | None = None,
    max_size: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """SRCC, PLCC (raw and after the logistic fit) of scores against the dataset's subjective scores."""
    paths, target = iqa_subset(dataset, max_images, seed)
    predicted, kept = [], []
    for path, value in zip(paths, target, strict=True):
        try:
            image = load_image(path)
        except ImageLoadError as err:  # one broken file must not end a training run at its last step
            log.warning("validation: skipping %s", err)
            continue
        predicted.append(float(score(resize_longer_side(image[None], max_size).to(device))[0]))
        kept.append(value)
    if len(kept) < 3:
        raise TrainingError(f"validation: only {len(kept)} of {len(paths)} IQA images could be read; need 3")
    values = correlations(predicted, kept, target_higher_is_better=dataset.higher_is_better)
    return {
        "iqa_srcc": values["srcc"],
        "iqa_plcc": values["plcc"],
        "iqa_plcc_logistic": values["plcc_logistic"],
        "iqa_images": float(len(kept)),
        "iqa_unreadable": float(len(paths) - len(kept)),
    }


def iqa_dataset(config: ValidationConfig) -> IQADataset | None:
    """The IQA dataset ``config`` names, read (and its files checked) so that a task can refuse it before training."""
    if config.iqa_images is None:
        return None
    try:
        return read_csv_dataset(config.iqa_images, config.iqa_scores)
    except (OSError, ValueError) as err:
        raise TrainingError(f"validation.iqa_images / validation.iqa_scores: {err}") from err


def run_validation(
    score: ScoreFunction,
    config: ValidationConfig,
    holdout_files: Sequence[Path],
    distortions: Sequence[str],
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Every check that ``config`` enables."""
    metrics: dict[str, float] = {}
    if holdout_files:
        metrics.update(
            synthetic_ranking(
                score,
                holdout_files,
                config.distortions or distortions,
                crop_size=config.crop_size,
                seed=config.seed,
                batch_size=config.batch_size,
                device=device,
            )
        )
    dataset = iqa_dataset(config)
    if dataset is not None:
        metrics.update(
            iqa_correlations(
                score,
                dataset,
                max_images=config.iqa_max_images,
                max_size=config.iqa_max_size,
                seed=config.seed,
                device=device,
            )
        )
    return metrics
