"""Re-IQA's quality-aware encoder training (modified MoCo-v2) as a :class:`training.engine.Task`.

``engine.batch_size`` counts chunks (pristine images); each chunk holds ``data.chunk.pairs_per_item``
query/key pairs, so one step encodes ``batch_size * pairs_per_item`` queries and as many keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qualiclip_metric.checkpoint import write_tensor_layout
from training import config as config_io
from training.engine import BaseTask, EngineConfig
from training.reiqa.data import ChunkConfig, ChunkDataset, collate_chunks
from training.reiqa.features import ENCODER_CONFIG, ENCODER_FILE, HEAD_FILE
from training.reiqa.model import MoCoConfig, QualityMoCo
from training.validation import pristine_split


@dataclass(frozen=True)
class ChunkDataConfig:
    #: A folder tree of training images (KADIS-700k pristine images plus authentic sets in the paper).
    images: str = "data/pristine"
    chunk: ChunkConfig = field(default_factory=ChunkConfig)
    seed: int = 0


@dataclass(frozen=True)
class HoldoutConfig:
    #: Images kept out of training; validation reports InfoNCE and positive-first accuracy on their chunks
    #: against the current queue (epoch 0 crops, so the figure is comparable across steps).
    holdout: int = 4
    seed: int = 0


@dataclass(frozen=True)
class ReIQATrainConfig:
    data: ChunkDataConfig = field(default_factory=ChunkDataConfig)
    model: MoCoConfig = field(default_factory=MoCoConfig)
    validation: HoldoutConfig = field(default_factory=HoldoutConfig)
    engine: EngineConfig = field(default_factory=lambda: EngineConfig(output_dir="runs/reiqa"))


class ReIQATask(BaseTask):
    collate = staticmethod(collate_chunks)

    def __init__(self, config: ReIQATrainConfig) -> None:
        self.config = config
        self.train_files, self.holdout_files = pristine_split(
            config.data.images, config.validation.holdout, config.validation.seed
        )

    def build_model(self) -> QualityMoCo:
        return QualityMoCo(self.config.model, seed=self.config.engine.seed)

    def build_dataset(self) -> ChunkDataset:
        return ChunkDataset(self.train_files, self.config.data.chunk, seed=self.config.data.seed)

    def validate(self, model: QualityMoCo) -> dict[str, float]:
        """InfoNCE and accuracy of held-out chunks in eval mode (no queue or key-encoder update)."""
        if not self.holdout_files:
            return {}
        dataset = ChunkDataset(self.holdout_files, self.config.data.chunk, seed=self.config.data.seed + 1)
        device = next(model.parameters()).device
        losses, accuracies = [], []
        for index in range(len(dataset)):
            batch = collate_chunks([dataset[0, index]])
            result = model({key: value.to(device) for key, value in batch.items()})
            losses.append(float(result["loss"]))
            accuracies.append(float(result["accuracy"]))
        return {"info_nce": sum(losses) / len(losses), "accuracy": sum(accuracies) / len(accuracies)}

    def export(self, model: QualityMoCo, directory: Path) -> None:
        """The query trunk in torchvision key names (``quality_encoder.safetensors``), its head, and a JSON config."""
        export_encoder(model, directory, {"trained_with": "training.reiqa", "config": config_io.to_dict(self.config)})


def export_encoder(model: QualityMoCo, directory: Path, provenance: dict[str, Any]) -> None:
    """The query trunk (torchvision key names) and its head, with a JSON config recording their sha256."""
    record = {
        "arch": model.config.arch,
        "feature_dim": model.trunk.feature_dim,
        "embedding_dim": model.config.embedding_dim,
        "hidden_dim": model.config.hidden_dim,
        "input": "RGB in [0, 1]; ImageNet mean/std normalisation is applied inside the trunk",
        "provenance": provenance,
    }
    write_tensor_layout(
        directory,
        {ENCODER_FILE: model.trunk.state_dict(), HEAD_FILE: model.head.state_dict()},
        record,
        config_file=ENCODER_CONFIG,
        metadata={ENCODER_FILE: {"arch": model.config.arch}},
        overwrite=True,
    )
