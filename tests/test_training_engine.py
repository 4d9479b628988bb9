"""The shared training engine and configuration, exercised through the QualiCLIP trainer.

Real runs at 64 x 64 on the Kodak crops in ``tests/data``: in-process where that is enough, and as
subprocesses (the module entry point, and ``torchrun`` with two gloo processes) where the process
boundary is the point.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from qualiclip_metric import QualiCLIP
from qualiclip_metric.distributed import Ranks
from training import config as config_io
from training.engine import (
    EngineConfig,
    StepBatchSampler,
    Trainer,
    checkpoint_paths,
    learning_rate_factor,
    load_training_state,
    read_metrics,
)
from training.errors import TrainingStateError
from training.qualiclip.task import LAYOUT_DIR, OFFICIAL_FILE, QualiCLIPTask, QualiCLIPTrainConfig

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
SMOKE = ROOT / "training" / "qualiclip" / "configs" / "smoke.yaml"
PAPER = ROOT / "training" / "qualiclip" / "configs" / "paper.yaml"


def small_config(output: Path, *overrides: str) -> QualiCLIPTrainConfig:
    base = [f"engine.output_dir={output}", "engine.progress=false", f"data.images={DATA}"]
    return config_io.load(QualiCLIPTrainConfig, SMOKE, [*base, *overrides])


def run_module(module: str, *args: str, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [*(launcher or [sys.executable, "-m"]), module, *args]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def final_model_state(output: Path) -> dict[str, torch.Tensor]:
    return load_training_state(checkpoint_paths(output / "checkpoints")[-1])["model"]


# -- configuration ------------------------------------------------------------------------------------


def test_configs_load_and_overrides_apply(tmp_path):
    paper = config_io.load(QualiCLIPTrainConfig, PAPER)
    assert paper.model.init == "openai" and paper.data.crops.levels == 5 and len(paper.model.prompt_pairs) == 7
    assert paper.engine.optimizer == "adamw" and paper.engine.schedule == "cosine"
    smoke = small_config(tmp_path, "engine.lr=3e-4", "data.crops.distortions=[jpeg]", "validation.iqa_max_size=null")
    assert smoke.engine.lr == 3e-4 and smoke.data.crops.distortions == ("jpeg",)
    # The resolved configuration survives a YAML round trip unchanged.
    path = tmp_path / "resolved.yaml"
    config_io.dump(smoke, path)
    assert config_io.load(QualiCLIPTrainConfig, path) == smoke


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("engine.stepz=3", "unknown key engine.stepz"),
        ("engine.steps=three", "engine.steps: expected an integer"),
        ("engine.precision=fp8", "engine.precision: must be one of"),
        ("data.crops.levels=9", "levels must be in 2..5"),
        ("engine.batch_size=0", "batch_size must be at least 1"),
        ("engine", "not of the form key.sub=value"),
    ],
)
def test_bad_configuration_names_the_key(tmp_path, override, message):
    with pytest.raises(config_io.ConfigError, match=message):
        small_config(tmp_path, override)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("engine.lr=true", "engine.lr: expected a number, got True"),  # a bool is an int to Python, not here
        ("engine.steps=yes", "engine.steps: expected an integer, got True"),  # YAML 1.1: yes is true
        ("engine.grad_clip=fast", "engine.grad_clip: expected a number or null, got 'fast'"),
        ("data.crops.levels=9", "data.crops: levels must be in 2..5"),  # the dataclass's own check, with its section
        ("data.crops.distortions=jpeg", "data.crops.distortions: expected a list"),
        ("data=3", "data: expected a mapping, got 3"),
    ],
)
def test_configuration_errors_name_the_dotted_key(tmp_path, override, message):
    with pytest.raises(config_io.ConfigError, match=re.escape(message)):
        small_config(tmp_path, override)


def test_yaml_quirks_become_the_declared_types(tmp_path):
    quirks = ["engine.lr=3e-4", "engine.min_lr_ratio=0", "data.images=2024", "engine.betas=[1, 0.5]"]
    config = small_config(tmp_path, *quirks)
    assert config.engine.lr == 3e-4 and isinstance(config.engine.lr, float)  # YAML 1.1 reads 3e-4 as a string
    assert isinstance(config.engine.min_lr_ratio, float) and config.data.images == "2024"
    assert config.engine.betas == (1.0, 0.5) and isinstance(config.engine.betas, tuple)


def test_a_section_in_yaml_changes_its_parents_default_section(tmp_path):
    from training.rankiqa.task import RankIQATrainConfig

    path = tmp_path / "rank.yaml"
    path.write_text("engine:\n  steps: 7\n")
    config = config_io.load(RankIQATrainConfig, path, ["engine.lr=2e-5"])
    # RankIQA's default engine is the paper's SGD recipe, not EngineConfig's defaults: only steps and lr change.
    assert config.engine.steps == 7 and config.engine.lr == 2e-5
    assert config.engine.optimizer == "sgd" and config.engine.lr_step_size == 10_000 and config.engine.momentum == 0.9


# -- schedule and data order ----------------------------------------------------------------------------


def test_learning_rate_warms_up_then_decays():
    config = EngineConfig(steps=110, warmup_steps=10, min_lr_ratio=0.1)
    factors = [learning_rate_factor(config, step) for step in range(110)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:], strict=False))
    assert factors[-1] == pytest.approx(0.1, abs=1e-3)
    step = EngineConfig(schedule="step", lr_step_size=5, lr_gamma=0.5)
    assert [learning_rate_factor(step, s) for s in (0, 4, 5, 12)] == [1.0, 1.0, 0.5, 0.25]


def test_ranks_split_the_same_global_batches():
    one = StepBatchSampler(10, 4, 0, 6, seed=3, setup=Ranks())
    ranks = [StepBatchSampler(10, 4, 0, 6, seed=3, setup=Ranks(rank, 2)) for rank in (0, 1)]
    for whole, first, second in zip(one, *ranks, strict=True):
        assert first + second == whole
    # An epoch (two steps of 4 out of 10 items) visits distinct items, and epochs differ in order.
    steps = list(one)
    assert len({index for _, index in steps[0] + steps[1]}) == 8
    assert [epoch for epoch, _ in steps[2]] == [1] * 4 and steps[0] != steps[2]
    resumed = StepBatchSampler(10, 4, 3, 6, seed=3, setup=Ranks())
    assert list(resumed) == steps[3:]
    with pytest.raises(ValueError, match="not divisible"):
        StepBatchSampler(10, 3, 0, 1, seed=0, setup=Ranks(0, 2))
    with pytest.raises(ValueError, match="fewer than one batch"):
        StepBatchSampler(2, 4, 0, 1, seed=0, setup=Ranks())


# -- training --------------------------------------------------------------------------------------------


class FixedBatchTask(QualiCLIPTask):
    """The same items in every epoch: one fixed batch, for an optimisation check."""

    def build_dataset(self):
        dataset = super().build_dataset()
        return _SameEveryEpoch(dataset)


class _SameEveryEpoch(torch.utils.data.Dataset):
    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return 2

    def __getitem__(self, key):
        return self.dataset[0, key[1]]


def test_loss_is_finite_and_falls_on_a_fixed_batch(tmp_path):
    config = small_config(
        tmp_path, "engine.steps=10", "engine.lr=2e-5", "engine.warmup_steps=2", "engine.schedule=constant"
    )
    config = replace(config, engine=replace(config.engine, checkpoint_every=100, validate_every=0))
    trainer = Trainer(FixedBatchTask(config), config.engine, config)
    trainer.fit()
    losses = [row["loss"] for row in read_metrics(tmp_path / "metrics.jsonl") if row["split"] == "train"]
    assert len(losses) == 10 and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) / 3 < 0.85 * losses[0], losses


def test_gradient_checkpointing_gives_the_same_gradients(tmp_path):
    # Frozen statistics: the recomputed forward pass must not update BatchNorm a second time.
    task = QualiCLIPTask(small_config(tmp_path, "model.batchnorm=frozen"))
    batch = task.collate([task.build_dataset()[0, index] for index in range(2)])
    gradients = []
    for checkpointing in (False, True):
        model = task.build_model()
        model.set_grad_checkpointing(checkpointing)
        model.train()
        model(batch)["loss"].backward()
        gradients.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(gradients[0], gradients[1], rtol=1e-4, atol=1e-7)


def test_run_exports_both_layouts_with_identical_scores(tmp_path):
    config = small_config(tmp_path, "engine.steps=2")
    task = QualiCLIPTask(config)
    trainer = Trainer(task, config.engine, config)
    summary = trainer.fit()
    assert summary["step"] == 2
    assert -1 <= summary["validation"]["synthetic_srcc"] <= 1
    images = torch.rand(3, 3, 64, 80, generator=torch.Generator().manual_seed(0))
    trained = trainer.model.scorer
    with torch.no_grad():
        expected = trained.eval()(images)
    for source in (tmp_path / "export" / LAYOUT_DIR, tmp_path / "export" / OFFICIAL_FILE):
        loaded = QualiCLIP.from_pretrained(source)
        assert torch.equal(loaded(images), expected), source
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["engine"]["steps"] == 2 and saved["model"]["init"] == "random"
    provenance = json.loads((tmp_path / "export" / LAYOUT_DIR / "config.json").read_text())["provenance"]
    assert provenance["trained_with"] == "training.qualiclip" and provenance["config"]["engine"]["steps"] == 2


def test_interrupted_and_resumed_run_ends_with_the_same_weights(tmp_path):
    common = ["--config", str(SMOKE), f"data.images={DATA}", "engine.progress=false", "engine.steps=4"]
    common += ["engine.checkpoint_every=2", "engine.keep_checkpoints=1", "engine.num_workers=1"]
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    run_module("training.qualiclip", *common, f"engine.output_dir={straight}")
    first = run_module("training.qualiclip", *common, f"engine.output_dir={interrupted}", "engine.stop_at_step=2")
    assert json.loads(first.stdout)["step"] == 2 and not (interrupted / "export").exists()
    second = run_module("training.qualiclip", *common, f"engine.output_dir={interrupted}")
    summary = json.loads(second.stdout)
    assert summary["start_step"] == 2 and summary["resumed_from"].endswith("step_00000002.pt")
    assert [path.name for path in checkpoint_paths(interrupted / "checkpoints")] == ["step_00000004.pt"]
    expected, resumed = final_model_state(straight), final_model_state(interrupted)
    assert expected.keys() == resumed.keys()
    for key in expected:
        assert torch.equal(expected[key], resumed[key]), key
    # The resumed run's metrics continue where the first one stopped.
    steps = [row["step"] for row in read_metrics(interrupted / "metrics.jsonl") if row["split"] == "train"]
    assert steps == [1, 2, 3, 4]


def test_two_gloo_processes_make_the_same_update_as_one(tmp_path):
    # Frozen BatchNorm (as in fine-tuning): every rank normalises alike, so the global batch defines the step.
    common = ["--config", str(SMOKE), f"data.images={DATA}", "engine.progress=false", "engine.steps=2"]
    common += ["engine.batch_size=4", "engine.optimizer=sgd", "engine.lr=0.05", "engine.momentum=0.0"]
    common += ["engine.schedule=constant", "model.batchnorm=frozen", "validation.holdout=0", "engine.num_workers=0"]
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
    run_module("training.qualiclip", *common, f"engine.output_dir={ddp}", launcher=torchrun)
    run_module("training.qualiclip", *common, f"engine.output_dir={single}")
    saved = load_training_state(checkpoint_paths(ddp / "checkpoints")[-1])
    assert saved["world_size"] == 2 and len(saved["rng"]) == 2
    initial = QualiCLIPTask(small_config(tmp_path, "model.batchnorm=frozen", "validation.holdout=0")).build_model()
    start = initial.state_dict()
    one, two = final_model_state(single), final_model_state(ddp)
    moved = 0
    for key, value in start.items():
        update_one, update_two = one[key] - value, two[key] - value
        if update_one.abs().max() > 0:
            moved += 1
        assert torch.allclose(update_one, update_two, rtol=1e-3, atol=1e-6), key
    assert moved > 100  # the step changed most of the image tower


def test_a_yaml_section_changes_the_parents_defaults(tmp_path):
    # QualiCLIPTrainConfig's engine section defaults to output_dir runs/qualiclip, not EngineConfig's own.
    path = tmp_path / "partial.yaml"
    path.write_text("engine:\n  steps: 7\n")
    config = config_io.load(QualiCLIPTrainConfig, path)
    assert config.engine.steps == 7 and config.engine.output_dir == QualiCLIPTrainConfig().engine.output_dir
    assert config.engine.output_dir != EngineConfig().output_dir


# -- faults: crafted, truncated and foreign resume files; unreadable and unusable data -------------------


class _RunsCode:
    """Unpickling this object runs a shell command: what a crafted checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_checkpoint_never_runs_code_and_resume_falls_back(tmp_path, caplog):
    marker = tmp_path / "code-ran"
    output = tmp_path / "run"
    config = small_config(output, "engine.steps=4", "engine.keep_checkpoints=3", "engine.stop_at_step=2")
    Trainer(QualiCLIPTask(config), config.engine, config).fit()
    checkpoints = output / "checkpoints"
    torch.save({"model": _RunsCode(marker)}, checkpoints / "step_00000003.pt")  # newest, crafted
    (checkpoints / "step_00000005.pt").write_bytes(b"")  # newer still, empty
    with pytest.raises(ValueError, match="never unpickled"):
        load_training_state(checkpoints / "step_00000003.pt")
    resumed = small_config(output, "engine.steps=4", "engine.keep_checkpoints=3")
    with caplog.at_level("WARNING", logger="training.engine"):
        summary = Trainer(QualiCLIPTask(resumed), resumed.engine, resumed).fit()
    assert not marker.exists()
    assert summary["start_step"] == 2 and summary["resumed_from"].endswith("step_00000002.pt")
    assert "empty file" in caplog.text and "never unpickled" in caplog.text
    assert "continuing from step_00000002.pt, the newest valid checkpoint" in caplog.text


def test_training_states_load_with_weights_only(tmp_path):
    config = small_config(tmp_path, "engine.steps=2")
    Trainer(QualiCLIPTask(config), config.engine, config).fit()
    path = checkpoint_paths(tmp_path / "checkpoints")[-1]
    state = torch.load(path, map_location="cpu", weights_only=True)  # plain tensors and values only
    assert state["format"] == "qualiclip-metric-training-state" and state["step"] == 2
    assert isinstance(state["rng"][0]["numpy"]["keys"], torch.Tensor)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty file"),
        (None, "truncated or corrupt"),  # the first half of a real checkpoint
        ({"step": 3}, "not a training checkpoint written by this engine"),
        ([1, 2, 3], "not a training checkpoint written by this engine"),
    ],
)
def test_unusable_resume_files_get_a_clear_error(tmp_path, content, message):
    path = tmp_path / "state.pt"
    if content is None:
        config = small_config(tmp_path / "run", "engine.steps=2")
        Trainer(QualiCLIPTask(config), config.engine, config).fit()
        whole = checkpoint_paths(tmp_path / "run" / "checkpoints")[-1].read_bytes()
        path.write_bytes(whole[: len(whole) // 2])
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(TrainingStateError, match=message):
        load_training_state(path)


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "training.qualiclip", "--config", str(SMOKE), "engine.progress=false", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _pristine_copy(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for image in sorted((DATA / "pristine").glob("*.png")):
        shutil.copy(image, folder / image.name)
    return folder


def test_bad_data_and_resume_files_exit_2_with_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()
    (unreadable / "a.png").write_bytes(b"not an image")
    (unreadable / "b.jpg").write_bytes(b"")
    square = _pristine_copy(tmp_path / "square")  # 128 x 128 images: two 128-px crops coincide
    never = tmp_path / "never"
    (never / "checkpoints").mkdir(parents=True)
    (never / "checkpoints" / "step_00000002.pt").write_bytes(b"x")
    out = f"engine.output_dir={tmp_path / 'out'}"
    old_run = [f"data.images={DATA}", f"engine.output_dir={never}"]
    cases = [
        ([f"data.images={tmp_path / 'missing'}", out], "does not exist"),
        ([f"data.images={empty}", out], "no image files"),
        ([f"data.images={unreadable}", out], "none of the 2 image files can be used (2 cannot be read"),
        ([f"data.images={square}", "data.crops.crop_size=128", out], "too small: items need two 128-pixel crops"),
        ([*old_run, "engine.resume=never"], "already holds 1 checkpoints"),
        (old_run, "none of the 1 checkpoints"),
        ([*old_run, f"engine.resume={tmp_path / 'gone.pt'}"], "does not exist"),
    ]
    for overrides, message in cases:
        result = _run_cli(*overrides)
        assert result.returncode == 2, (overrides, result.stderr[-2000:])
        assert "Traceback" not in result.stderr and message in result.stderr, (overrides, result.stderr[-2000:])
    assert (never / "checkpoints" / "step_00000002.pt").read_bytes() == b"x"  # nothing of the old run was touched


def test_unreadable_images_are_skipped_with_a_count(tmp_path, caplog):
    images = _pristine_copy(tmp_path / "images")
    jpeg = tmp_path / "whole.jpg"
    Image.open(images / "kodim05_crop.png").save(jpeg, quality=95)
    whole = jpeg.read_bytes()
    (images / "kodim99_truncated.jpg").write_bytes(whole[: len(whole) // 3])  # header fine, pixels cut
    (images / "zz_not_an_image.png").write_bytes(b"\x89PNG garbage")
    config = small_config(tmp_path / "run", f"data.images={images}", "engine.steps=6", "validation.holdout=0")
    with caplog.at_level("WARNING"):
        task = QualiCLIPTask(config)
        summary = Trainer(task, config.engine, config).fit()
    assert "skipping 1 of 6 unreadable image files" in caplog.text
    assert len(task.train_files) == 5 and summary["step"] == 6
    assert summary["skipped_items"] >= 1 and "kodim99_truncated.jpg" in caplog.text
    logged = [row for row in read_metrics(tmp_path / "run" / "metrics.jsonl") if row["split"] == "train"]
    assert logged[-1]["skipped_items"] == summary["skipped_items"]
