"""MOS data for QualiCLIP+: one split of the evaluation protocol, and MOS scaled to the score's [0, 1].

The split is :func:`qualiclip_metric.evaluation.dataset_splits`, the one every evaluation in the project
uses, so a trained run's test part is the test part of that split in ``qualiclip evaluate``'s protocol.
Training items are random crops built from ``(epoch, index)`` alone (RankIQA's MOS dataset), so resume
is exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qualiclip_metric.datasets import IQADataset, read_csv_dataset
from qualiclip_metric.evaluation import Protocol, dataset_splits
from qualiclip_metric.inputs import MIN_IMAGE_SIDE
from training.errors import TrainingError


@dataclass(frozen=True)
class MOSSplitDataConfig:
    """An image folder and its MOS file; training uses the training part of one random split."""

    #: Image folder, and a score CSV in any layout ``read_csv_dataset`` reads (``image,mos``, pyiqa's meta_info).
    images: str = "data/koniq10k/1024x768"
    scores: str = "data/koniq10k/meta_info_KonIQ10kDataset.csv"
    #: Train on the complement of split ``split_index`` of ``qualiclip_metric.evaluation.dataset_splits`` with
    #: ``Protocol(splits, test_fraction, split_seed)`` (by content when the CSV names reference images) and
    #: validate on that split.
    split_index: int = 0
    splits: int = 10
    test_fraction: float = 0.2
    split_seed: int = 0
    #: The score scale [low, high] that maps MOS onto [0, 1]; None: the training part's minimum and maximum.
    mos_range: tuple[float, float] | None = None
    #: Side of the random square crop of every training item (images smaller than it are upscaled).
    crop_size: int = 384
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.split_index < self.splits:
            raise ValueError(f"split_index must be in 0..{self.splits - 1}, got {self.split_index}")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.crop_size < MIN_IMAGE_SIDE:
            raise ValueError(f"crop_size must be at least {MIN_IMAGE_SIDE}, got {self.crop_size}")
        if self.mos_range is not None and not self.mos_range[0] < self.mos_range[1]:
            raise ValueError(f"mos_range must be [low, high] with low < high, got {list(self.mos_range)}")


@dataclass
class MOSSplit:
    """The training part (paths, MOS scaled to [0, 1], higher better) and the test part (original MOS)."""

    train_paths: list[Path]
    train_targets: np.ndarray
    test: IQADataset
    #: The [low, high] that was mapped onto [0, 1].
    mos_range: tuple[float, float]


def read_split(config: MOSSplitDataConfig) -> MOSSplit:
    """Read the MOS file, split it, and scale the training MOS; bad data raises :class:`TrainingError`."""
    try:
        dataset = read_csv_dataset(config.images, config.scores)
    except (OSError, ValueError) as err:
        raise TrainingError(f"data.images / data.scores: {err}") from err
    protocol = Protocol(splits=config.splits, test_fraction=config.test_fraction, seed=config.split_seed)
    split = dataset_splits(dataset, protocol)[config.split_index]
    train, test = split.train, split.test
    if len(train) < 2 or len(test) < 3:
        raise TrainingError(
            f"data.scores: {len(dataset)} images split into {len(train)} for training and {len(test)} for testing; "
            "need at least 2 and 3"
        )
    scores = dataset.scores[train]
    low, high = config.mos_range or (float(scores.min()), float(scores.max()))
    if not low < high:
        raise TrainingError(f"data.scores: every training MOS is {low:g}; set data.mos_range to the score scale")
    # The score is higher for better images; a DMOS target (lower is better) is turned around.
    targets = (scores - low) / (high - low) if dataset.higher_is_better else (high - scores) / (high - low)
    held_out = IQADataset(
        f"{dataset.name} (test part of split {config.split_index})",
        [dataset.paths[i] for i in test],
        dataset.scores[test],
        dataset.higher_is_better,
        [dataset.groups[i] for i in test] if dataset.groups is not None else None,
        dict(dataset.metadata),
    )
    return MOSSplit([dataset.paths[i] for i in train], targets.astype(np.float32), held_out, (low, high))
