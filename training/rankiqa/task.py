"""RankIQA's two training stages as a :class:`training.engine.Task`; ``stage`` picks one."""

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
from training.engine import EngineConfig, decay_groups
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
    """The network and the loss of the stage: ranked sets to the hinge loss, or crops to the L2 loss."""

    def __init__(self, net: RankIQANet, stage: str, loss: LossConfig) -> None:
        super().__init__()
        self.net, self.stage, self.loss_config = net, stage, loss

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        scores = self.net(batch["images"])
        if self.stage == "rank":
            return batch_hinge_loss(
                scores, batch["ranks"], batch["groups"], self.loss_config.margin, self.loss_config.reduction
            )
        return {"loss": torch.mean((scores.float() - batch["targets"]) ** 2)}


def train_test_indices(dataset: IQADataset, config: MOSDataConfig) -> tuple[np.ndarray, np.ndarray]:
    """Training and test indices of the configured split of the evaluation protocol (all and none without one)."""
    if config.split_index is None:
        return np.arange(len(dataset)), np.arange(0)
    protocol = Protocol(splits=config.splits, test_fraction=config.test_fraction, seed=config.split_seed)
    split = dataset_splits(dataset, protocol)[config.split_index]
    return split.train, split.test


class RankIQATask:
    def __init__(self, config: RankIQATrainConfig) -> None:
        self.config = config
        self.target_mean, self.target_std = 0.0, 1.0
        iqa_dataset(config.validation)  # refuse a missing validation set now, not after training
        if config.stage == "rank":
            self.train_files, self.holdout_files = pristine_split(
                config.rank.images, config.validation.holdout, config.validation.seed, what="rank.images"
            )
            return
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

    def build_model(self) -> RankIQATrainingModule:
        return RankIQATrainingModule(build_model(self.config.model), self.config.stage, self.config.loss)

    def build_dataset(self) -> RankedDataset | MOSDataset:
        if self.config.stage == "rank":
            return RankedDataset(self.train_files, self.config.rank, seed=self.config.rank.seed)
        targets = (self.train_scores - self.target_mean) / self.target_std
        return MOSDataset(self.train_paths, targets.tolist(), self.config.mos.crop_size, seed=self.config.mos.seed)

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Tensor]:
        return collate_ranked(items) if self.config.stage == "rank" else collate_mos(items)

    def param_groups(self, model: nn.Module, lr: float) -> list[dict[str, Any]]:
        """Convolutions at ``lr``; the fully connected layers at ``lr`` times the stage's head multiplier."""
        net: RankIQANet = model.net
        stage = self.config.rank if self.config.stage == "rank" else self.config.mos
        return decay_groups(net.features, lr=lr) + decay_groups(net.classifier, lr=lr * stage.head_lr_multiplier)

    def scorer(self, net: RankIQANet) -> RankIQA:
        return RankIQA(net, self.config.test, self.target_mean, self.target_std)

    def validate(self, model: RankIQATrainingModule) -> dict[str, float]:
        if self.config.stage == "rank":
            device = next(model.parameters()).device
            return run_validation(
                model.net, self.config.validation, self.holdout_files, self.config.rank.distortion_names, device
            )
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

    def export(self, model: RankIQATrainingModule, directory: Path) -> None:
        """``model.safetensors`` (the network) and ``config.json`` (architecture, test procedure, MOS scaling,
        the sha256 of the weights and the training configuration as provenance)."""
        saved = {
            "model_type": "rankiqa",
            "arch": model.net.arch,
            "fc_width": model.net.fc_width,
            "stage": self.config.stage,
            "test": config_io.to_dict(self.config.test),
            "target_mean": self.target_mean,
            "target_std": self.target_std,
            "provenance": {"trained_with": "training.rankiqa", "config": config_io.to_dict(self.config)},
        }
        write_tensor_layout(directory, {WEIGHTS_FILE: model.net.state_dict()}, saved, overwrite=True)
