"""QualiCLIP's self-supervised fine-tuning as a :class:`training.engine.Task`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from qualiclip_metric.checkpoint import write_layout, write_official
from training import config as config_io
from training.engine import BaseTask, EngineConfig
from training.qualiclip.data import CropPairConfig, CropPairDataset, collate_crop_pairs
from training.qualiclip.losses import QualiCLIPLossConfig
from training.qualiclip.model import ModelConfig, QualiCLIPTrainingModule, build_scorer
from training.validation import ValidationConfig, iqa_dataset, pristine_split, run_validation

#: Names of the exported files inside ``<output_dir>/export``.
LAYOUT_DIR = "qualiclip-rn50"
OFFICIAL_FILE = "qualiclip.pth"


@dataclass(frozen=True)
class CropPairDataConfig:
    #: A folder tree of pristine images (KADIS-700k's 140,000 reference images in the paper setup).
    images: str = "data/pristine"
    crops: CropPairConfig = field(default_factory=CropPairConfig)
    seed: int = 0


@dataclass(frozen=True)
class QualiCLIPTrainConfig:
    data: CropPairDataConfig = field(default_factory=CropPairDataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: QualiCLIPLossConfig = field(default_factory=QualiCLIPLossConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    engine: EngineConfig = field(default_factory=lambda: EngineConfig(output_dir="runs/qualiclip"))


class QualiCLIPTask(BaseTask):
    collate = staticmethod(collate_crop_pairs)

    def __init__(self, config: QualiCLIPTrainConfig) -> None:
        self.config = config
        self.train_files, self.holdout_files = pristine_split(
            config.data.images, config.validation.holdout, config.validation.seed
        )
        iqa_dataset(config.validation)  # refuse a missing validation set now, not after training

    def build_model(self) -> QualiCLIPTrainingModule:
        scorer, text_state = build_scorer(self.config.model)
        if self.config.engine.precision == "tf32":
            scorer.precision = "tf32"  # the scorer otherwise keeps CUDA fp32 strict
        return QualiCLIPTrainingModule(scorer, self.config.loss, self.config.model.batchnorm, text_state)

    def build_dataset(self) -> CropPairDataset:
        return CropPairDataset(self.train_files, self.config.data.crops, seed=self.config.data.seed)

    def validate(self, model: QualiCLIPTrainingModule) -> dict[str, float]:
        return run_validation(
            model.scorer,
            self.config.validation,
            self.holdout_files,
            self.config.data.crops.distortion_names,
            device=model.scorer.device,
        )

    def export(self, model: QualiCLIPTrainingModule, directory: Path) -> None:
        """Our Hub layout (loadable by ``QualiCLIP.from_pretrained``) and the official ``.pth`` layout."""
        checkpoint = model.export_checkpoint(
            {"trained_with": "training.qualiclip", "config": config_io.to_dict(self.config)}
        )
        write_layout(checkpoint, directory / LAYOUT_DIR, overwrite=True)
        if checkpoint.text_state is not None:
            write_official(checkpoint, directory / OFFICIAL_FILE)
