"""RankIQA's two training stages as two :class:`training.engine.Task` classes; ``stage`` picks one."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from qualiclip_metric.checkpoint import write_tensor_layout
from qualiclip_metric.datasets import IQADataset, read_csv_dataset
from qualiclip_metric.errors import ImageLoadError
from qualiclip_metric.evaluation import Protocol, correlations, dataset_splits
from qualiclip_metric.inputs import load_image
from training import config as config_io
from training.engine import BaseTask, EngineConfig, decay_groups
from training.errors import TrainingError
from training.rankiqa.data import (
    MOSDataConfig,
    MOSDataset,
    RankDataConfig,
    RankedDataset,
    collate_mos,
    collate_ranked,
)
from training.rankiqa.inference import RankIQA, TestConfig
from training.rankiqa.losses import Reduction, batch_hinge_loss
from training.rankiqa.model import WEIGHTS_FILE, ModelConfig, RankIQANet, build_model
from training.validation import ValidationConfig, iqa_dataset, pristine_split, run_validation

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LossConfig:
    #: Hinge margin of stage 1 (10 in the released code).
    margin: float = 10.0
    #: "mean" over the pairs of a batch, or their "sum".
    reduction: Reduction = "mean"

    def __post_init__(self) -> None:
        if self.margin < 0:
            raise ValueError(f"margin must be non-negative, got {self.margin}")


def _paper_engine() -> EngineConfig:
    """SPEC section 4: SGD, momentum 0.9, weight decay 5e-4, x0.1 every 10k steps, 50k steps (lr: LIVE's)."""
    return EngineConfig(
        output_dir="runs/rankiqa",
        optimizer="sgd",
        lr=1e-5,
        momentum=0.9,
        weight_decay=5e-4,
        schedule="step",
        lr_step_size=10_000,
        lr_gamma=0.1,
        steps=50_000,
    )


@dataclass(frozen=True)
class RankIQATrainConfig:
    #: "rank": stage 1 (Siamese ranking of synthetic degradations); "mos": stage 2 (L2 regression of MOS).
    stage: Literal["rank", "mos"] = "rank"
    model: ModelConfig = field(default_factory=ModelConfig)
    rank: RankDataConfig = field(default_factory=RankDataConfig)
    mos: MOSDataConfig = field(default_factory=MOSDataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    test: TestConfig = field(default_factory=TestConfig)
    #: Stage 1's held-out checks (synthetic ranking on held-out pristine images, an optional IQA set).
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    engine: EngineConfig = field(default_factory=_paper_engine)


class RankIQATrainingModule(nn.Module):
    """The network and the loss of a stage; ``forward`` maps a batch to its losses."""

    def __init__(self, net: RankIQANet, loss: LossConfig) -> None:
        super().__init__()
        self.net, self.loss_config = net, loss


class RankingModule(RankIQATrainingModule):
    """Stage 1: ranked sets to the batch hinge loss over every ordered pair of a set."""

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        scores = self.net(batch["images"])
        return batch_hinge_loss(
            scores, batch["ranks"], batch["groups"], self.loss_config.margin, self.loss_config.reduction
        )


class MOSRegressionModule(RankIQATrainingModule):
    """Stage 2: crops to the L2 loss against their (normalised) MOS."""

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        scores = self.net(batch["images"])
        return {"loss": torch.mean((scores.float() - batch["targets"]) ** 2)}


def train_test_indices(dataset: IQADataset, config: MOSDataConfig) -> tuple[np.ndarray, np.ndarray]:
    """Training and test indices of the configured split of the evaluation protocol (all and none without one)."""
    if config.split_index is None:
        return np.arange(len(dataset)), np.arange(0)
    protocol = Protocol(splits=config.splits, test_fraction=config.test_fraction, seed=config.split_seed)
    split = dataset_splits(dataset, protocol)[config.split_index]
    return split.train, split.test


class RankIQAStageTask(BaseTask):
    """What both stages share: the network, the learning rates of its two parts, the scorer and the export."""

    stage: str
    module_class: type[RankIQATrainingModule]
    #: The fully connected layers' learning rate over the base one (the stage's ``head_lr_multiplier``).
    head_lr_multiplier: float

    def __init__(self, config: RankIQATrainConfig) -> None:
        self.config = config
        self.target_mean, self.target_std = 0.0, 1.0
        iqa_dataset(config.validation)  # refuse a missing validation set now, not after training

    def build_model(self) -> RankIQATrainingModule:
        return self.module_class(build_model(self.config.model), self.config.loss)

    def param_groups(self, model: nn.Module, lr: float) -> list[dict[str, Any]]:
        """Convolutions at ``lr``; the fully connected layers at ``lr`` times the stage's head multiplier."""
        net: RankIQANet = model.net
        return decay_groups(net.features, lr=lr) + decay_groups(net.classifier, lr=lr * self.head_lr_multiplier)

    def scorer(self, net: RankIQANet) -> RankIQA:
        return RankIQA(net, self.config.test, self.target_mean, self.target_std)

    def export(self, model: RankIQATrainingModule, directory: Path) -> None:
        """``model.safetensors`` (the network) and ``config.json`` (architecture, test procedure, MOS scaling,
        the sha256 of the weights and the training configuration as provenance)."""
        saved = {
            "model_type": "rankiqa",
            "arch": model.net.arch,
            "fc_width": model.net.fc_width,
            "stage": self.stage,
            "test": config_io.to_dict(self.config.test),
            "target_mean": self.target_mean,
            "target_std": self.target_std,
            "provenance": {"trained_with": "training.rankiqa", "config": config_io.to_dict(self.config)},
        }
        write_tensor_layout(directory, {WEIGHTS_FILE: model.net.state_dict()}, saved, overwrite=True)


class RankStageTask(RankIQAStageTask):
    """Stage 1: Siamese ranking of synthetic degradations of pristine images, checked on held-out ones."""

    stage = "rank"
    module_class = RankingModule
    collate = staticmethod(collate_ranked)

    def __init__(self, config: RankIQATrainConfig) -> None:
        super().__init__(config)
        self.head_lr_multiplier = config.rank.head_lr_multiplier
        self.train_files, self.holdout_files = pristine_split(
            config.rank.images, config.validation.holdout, config.validation.seed, what="rank.images"
        )

    def build_dataset(self) -> RankedDataset:
        return RankedDataset(self.train_files, self.config.rank, seed=self.config.rank.seed)

    def validate(self, model: RankIQATrainingModule) -> dict[str, float]:
        device = next(model.parameters()).device
        return run_validation(
            model.net, self.config.validation, self.holdout_files, self.config.rank.distortion_names, device
        )


class MOSStageTask(RankIQAStageTask):
    """Stage 2: L2 regression of MOS on the training part of a split, tested on its test part."""

    stage = "mos"
    module_class = MOSRegressionModule
    collate = staticmethod(collate_mos)

    def __init__(self, config: RankIQATrainConfig) -> None:
        super().__init__(config)
        self.head_lr_multiplier = config.mos.head_lr_multiplier
        try:
            dataset = read_csv_dataset(config.mos.images, config.mos.scores)
        except (OSError, ValueError) as err:
            raise TrainingError(f"mos.images / mos.scores: {err}") from err
        train, test = train_test_indices(dataset, config.mos)
        scores = dataset.scores if dataset.higher_is_better else -dataset.scores  # DMOS: higher is worse
        self.train_paths, self.train_scores = [dataset.paths[i] for i in train], scores[train]
        self.test_paths, self.test_scores = [dataset.paths[i] for i in test], scores[test]
        if config.mos.normalize_targets:
            self.target_mean = float(self.train_scores.mean())
            self.target_std = float(self.train_scores.std()) or 1.0

    def build_dataset(self) -> MOSDataset:
        targets = (self.train_scores - self.target_mean) / self.target_std
        return MOSDataset(self.train_paths, targets.tolist(), self.config.mos.crop_size, seed=self.config.mos.seed)

    def validate(self, model: RankIQATrainingModule) -> dict[str, float]:
        if len(self.test_paths) < 3:
            return {}
        scorer = self.scorer(model.net)
        predicted, targets = [], []
        for path, target in zip(self.test_paths, self.test_scores, strict=True):
            try:
                image = load_image(path)
            except ImageLoadError as err:
                log.warning("validation: skipping %s", err)
                continue
            predicted.append(scorer.score_image(image))
            targets.append(target)
        if len(predicted) < 3:
            return {}
        values = correlations(predicted, targets)
        return {
            "test_srcc": values["srcc"],
            "test_plcc": values["plcc"],
            "test_plcc_logistic": values["plcc_logistic"],
            "test_images": float(len(predicted)),
        }


def RankIQATask(config: RankIQATrainConfig) -> RankStageTask | MOSStageTask:
    """The task of ``config.stage``: :class:`RankStageTask` or :class:`MOSStageTask` (named like a class, as
    the command line and the other trainers name their tasks)."""
    return {"rank": RankStageTask, "mos": MOSStageTask}[config.stage](config)
