"""QualiCLIP+ prompt learning on MOS: real runs on a generated MOS set, with the random-weight CLIP of conftest.

The MOS of the generated images falls with their blur, so there is something to learn. With crops as large
as the images and a batch of the whole training part, every step sees the same data, so the loss must fall.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_images
from PIL import Image

from qualiclip_metric import QualiCLIP
from qualiclip_metric.checkpoint import read_checkpoint
from qualiclip_metric.prompt_learner import read_prompt_learner
from training import config as config_io
from training.engine import Trainer, checkpoint_paths, load_training_state, read_metrics
from training.qualiclip_plus.task import LAYOUT_DIR, PROMPT_LEARNER_FILE, QualiCLIPPlusTask, QualiCLIPPlusTrainConfig

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "training" / "qualiclip_plus" / "configs" / "smoke.yaml"
SIZE = 64
#: 11 images: the split's test part is 3 of them, the training part 8, one batch.
COUNT = 11
STEPS = 4


def write_mos_set(folder: Path) -> Path:
    """Images blurred by growing box filters, and a MOS that falls with the blur; returns the CSV."""
    images = make_images(COUNT, SIZE, SIZE, seed=7)
    (folder / "images").mkdir(parents=True)
    rows = []
    for index, image in enumerate(images):
        kernel = 1 + 2 * (index % 5)
        blurred = F.avg_pool2d(image[None], kernel, stride=1, padding=kernel // 2, count_include_pad=False)[0]
        name = f"img{index:02d}.png"
        pixels = (blurred.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(folder / "images" / name)
        rows.append((name, 90.0 - 8.0 * kernel + index % 3))
    scores = folder / "mos.csv"
    with open(scores, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([("image", "mos"), *rows])
    return scores


@pytest.fixture(scope="module")
def mos_set(module_tmp_path: Path) -> tuple[Path, Path]:
    scores = write_mos_set(module_tmp_path / "mos")
    return scores.parent / "images", scores


def run_config(output: Path, mos_set: tuple[Path, Path], init: Path, *overrides: str) -> QualiCLIPPlusTrainConfig:
    images, scores = mos_set
    base = [
        f"data.images={images}",
        f"data.scores={scores}",
        "data.test_fraction=0.25",
        f"data.crop_size={SIZE}",
        f"model.init={init}",
        "validation.max_images=null",
        "validation.max_size=null",
        f"engine.output_dir={output}",
        f"engine.steps={STEPS}",
        "engine.batch_size=8",
        "engine.checkpoint_every=1",
        "engine.keep_checkpoints=3",
        "engine.validate_at_start=true",
        "engine.progress=false",
    ]
    return config_io.load(QualiCLIPPlusTrainConfig, SMOKE, [*base, *overrides])


@pytest.fixture(scope="module")
def trained(module_tmp_path: Path, mos_set, official_pth: Path) -> tuple[Trainer, dict, Path]:
    output = module_tmp_path / "run"
    config = run_config(output, mos_set, official_pth)
    trainer = Trainer(QualiCLIPPlusTask(config), config.engine, config)
    summary = trainer.fit()
    return trainer, summary, output


def test_loss_falls_and_the_test_part_is_validated(trained):
    _, summary, output = trained
    losses = [row["loss"] for row in read_metrics(output / "metrics.jsonl") if row["split"] == "train"]
    assert len(losses) == STEPS and all(np.isfinite(losses))
    assert losses[-1] < 0.9 * losses[0], losses
    for validation in (summary["initial_validation"], summary["validation"]):
        assert validation["test_images"] == 3 and -1 <= validation["test_srcc"] <= 1
    assert summary["validation"] != summary["initial_validation"]  # the context moved


def test_exports_score_alike_and_like_the_training_module(trained, official_pth):
    trainer, _, output = trained
    module = trainer.model
    images = make_images(3, 72, 88, seed=11)
    layout = QualiCLIP.from_pretrained(output / "export" / LAYOUT_DIR)
    learner_file = output / "export" / PROMPT_LEARNER_FILE
    plus = QualiCLIP.from_pretrained(official_pth, prompt_learner=learner_file)
    module.eval()
    with torch.no_grad():
        expected = module.inference_scorer()(images)
        # The training forward's own score (image features, then the learned prompt features).
        training = module.scores_from_features(module.scorer.image_features(images), module.prompt_features())
        from_layout, from_learner = layout(images), plus(images)
    assert (from_layout - from_learner).abs().max() <= 1e-6
    assert (from_layout - expected).abs().max() <= 1e-6
    assert (training - expected).abs().max() <= 1e-6
    assert layout.temperature == plus.temperature == 2.0
    assert layout.score_logit_scale == pytest.approx(100.0)  # exp(logit_scale) of the base
    assert not (output / "export" / LAYOUT_DIR / "text.safetensors").exists()  # scores with the image tower alone
    # pyiqa's layout, loadable without unpickling code, holding the trained context.
    state = torch.load(learner_file, map_location="cpu", weights_only=True)
    assert set(state) == {"params"} and state["params"]["prompt_learner.ctx"].shape == (14, 16, 512)
    assert torch.equal(read_prompt_learner(learner_file)["prompt_learner.ctx"], module.learner.ctx.detach())
    provenance = json.loads((output / "export" / LAYOUT_DIR / "config.json").read_text())["provenance"]
    assert provenance["trained_with"] == "training.qualiclip_plus" and provenance["config"]["engine"]["steps"] == STEPS


def test_only_the_context_learns(trained, official_pth, mos_set):
    trainer, _, _ = trained
    module = trainer.model
    base = read_checkpoint(official_pth)
    # After training, both towers are exactly the starting weights.
    for key, value in module.scorer.visual.state_dict().items():
        assert torch.equal(value, base.image_state[f"visual.{key}"]), key
    tower = module.learner.tower.state_dict()
    for key, value in base.text_state.items():
        if key in tower:
            assert torch.equal(tower[key], value), key
    # One more backward pass: the context is the only parameter, and the only thing with a gradient.
    assert [name for name, _ in module.named_parameters()] == ["learner.ctx"]
    task = trainer.task
    dataset = task.build_dataset()
    batch = task.collate([dataset[0, index] for index in range(4)])
    module.train()
    module(batch)["loss"].backward()
    assert module.learner.ctx.grad is not None and module.learner.ctx.grad.abs().sum() > 0
    frozen = [*module.scorer.parameters(), *module.learner.tower.parameters()]
    assert frozen and all(p.grad is None and not p.requires_grad for p in frozen)
    module.learner.ctx.grad = None
    # A training state is the prompt learner alone, plain tensors.
    state = load_training_state(checkpoint_paths(trainer.checkpoint_dir)[-1])
    assert set(state["model"]) == {"learner.ctx", "learner.token_prefix", "learner.token_suffix"}


def test_a_resumed_run_reaches_the_uninterrupted_runs_context(trained, module_tmp_path, mos_set, official_pth):
    # The engine's own tests prove exact resume in general; this is the short check for this task's state.
    _, _, output = trained
    resumed_output = module_tmp_path / "resumed"
    (resumed_output / "checkpoints").mkdir(parents=True)
    shutil.copy(output / "checkpoints" / "step_00000002.pt", resumed_output / "checkpoints")
    config = run_config(
        resumed_output, mos_set, official_pth, "engine.validate_at_start=false", "engine.stop_at_step=3"
    )
    summary = Trainer(QualiCLIPPlusTask(config), config.engine, config).fit()
    assert summary["start_step"] == 2 and summary["step"] == 3
    resumed = load_training_state(resumed_output / "checkpoints" / "step_00000003.pt")
    straight = load_training_state(output / "checkpoints" / "step_00000003.pt")
    assert torch.equal(resumed["model"]["learner.ctx"], straight["model"]["learner.ctx"])
    assert torch.equal(resumed["optimizer"]["state"][0]["exp_avg"], straight["optimizer"]["state"][0]["exp_avg"])


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "training.qualiclip_plus", "--config", str(SMOKE), "engine.progress=false", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_cli_runs_the_smoke_config_and_refuses_a_missing_mos_file(tmp_path, mos_set):
    images, scores = mos_set
    output = tmp_path / "smoke"
    common = [f"data.images={images}", f"data.scores={scores}"]
    result = _run_cli(*common, "engine.steps=1", f"engine.output_dir={output}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["step"] == 1
    assert (output / "export" / LAYOUT_DIR / "model.safetensors").is_file()
    assert (output / "export" / PROMPT_LEARNER_FILE).is_file()
    missing = tmp_path / "missing.csv"
    result = _run_cli(f"data.images={images}", f"data.scores={missing}", f"engine.output_dir={tmp_path / 'never'}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "data.images / data.scores" in lines[0] and "missing.csv" in lines[0], result.stderr
    assert not (tmp_path / "never").exists()
