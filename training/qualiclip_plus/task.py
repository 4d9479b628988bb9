"""QualiCLIP+'s prompt learning on MOS as a :class:`training.engine.Task`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from qualiclip_metric.checkpoint import write_layout
from qualiclip_metric.integrity import sha256_file
from qualiclip_metric.prompt_learner import with_learned_prompts
from training import config as config_io
from training.engine import BaseTask, EngineConfig, save_atomically
from training.qualiclip_plus.data import MOSSplitDataConfig, read_split
from training.qualiclip_plus.model import LossConfig, ModelConfig, QualiCLIPPlusTrainingModule, load_base
from training.rankiqa.data import MOSDataset, collate_mos
from training.validation import iqa_correlations

#: Names of the exported files inside ``<output_dir>/export``.
LAYOUT_DIR = "qualiclip-plus"
PROMPT_LEARNER_FILE = "prompt_learner.pth"


@dataclass(frozen=True)
class TestPartConfig:
    """The test part of the split, scored like inference: whole images, fp32, the library's scorer."""

    #: Score a fixed random subset of this many test images (None: all).
    max_images: int | None = None
    #: Downscale the longer side to this size first (None: full resolution, as pyiqa tests).
    max_size: int | None = None
    seed: int = 0


def _pyiqa_engine() -> EngineConfig:
    """pyiqa's optimiser: Adam at 2e-3 with cosine decay (AdamW without weight decay is Adam)."""
    return EngineConfig(
        output_dir="runs/qualiclip-plus", optimizer="adamw", lr=2e-3, weight_decay=0.0, schedule="cosine", batch_size=16
    )


@dataclass(frozen=True)
class QualiCLIPPlusTrainConfig:
    data: MOSSplitDataConfig = field(default_factory=MOSSplitDataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    validation: TestPartConfig = field(default_factory=TestPartConfig)
    engine: EngineConfig = field(default_factory=_pyiqa_engine)


class QualiCLIPPlusTask(BaseTask):
    """Only the context learns: the towers are not parameters of the module, so the default groups hold it alone."""

    collate = staticmethod(collate_mos)

    def __init__(self, config: QualiCLIPPlusTrainConfig) -> None:
        self.config = config
        self.split = read_split(config.data)  # bad data is refused before any weights are read

    def build_model(self) -> QualiCLIPPlusTrainingModule:
        return QualiCLIPPlusTrainingModule(load_base(self.config.model), self.config.model, self.config.loss)

    def build_dataset(self) -> MOSDataset:
        data = self.config.data
        return MOSDataset(self.split.train_paths, self.split.train_targets.tolist(), data.crop_size, seed=data.seed)

    def validate(self, model: QualiCLIPPlusTrainingModule) -> dict[str, float]:
        """SRCC and PLCC (raw and after the logistic fit) on the test part, through the evaluation module."""
        scorer = model.inference_scorer()
        validation = self.config.validation
        metrics = iqa_correlations(
            scorer,
            self.split.test,
            max_images=validation.max_images,
            max_size=validation.max_size,
            seed=validation.seed,
            device=scorer.device,
        )
        return {f"test_{key.removeprefix('iqa_')}": value for key, value in metrics.items()}

    def export(self, model: QualiCLIPPlusTrainingModule, directory: Path) -> None:
        """pyiqa's prompt-learner file, and the package layout with the learned prompts already encoded."""
        state = model.learner.pyiqa_state()
        learner_path = directory / PROMPT_LEARNER_FILE
        save_atomically(state, learner_path)
        provenance = {
            "trained_with": "training.qualiclip_plus",
            "init": model.base.origin,
            "prompt_learner_sha256": sha256_file(learner_path),
            "mos_range": list(self.split.mos_range),
            "config": config_io.to_dict(self.config),
        }
        checkpoint = with_learned_prompts(model.base, state["params"], PROMPT_LEARNER_FILE, provenance)
        write_layout(checkpoint, directory / LAYOUT_DIR, include_text=False, overwrite=True)
