"""RankIQA baseline: the batch hinge loss, the ranked data, stage 2's learning rates, the entry points."""

import csv
import itertools
import json
import logging
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from qualiclip_metric import CheckpointError
from qualiclip_metric.evaluation import random_splits
from training.engine import EngineConfig, build_optimizer, read_metrics
from training.rankiqa import model as model_module
from training.rankiqa.data import (
    LIVE_DISTORTIONS,
    TID2013_TO_BANK,
    MOSDataConfig,
    RankDataConfig,
    RankedDataset,
    collate_ranked,
)
from training.rankiqa.inference import RankIQA
from training.rankiqa.inference import TestConfig as CropTestConfig
from training.rankiqa.losses import batch_hinge_loss
from training.rankiqa.model import ModelConfig, RankIQANet, build_model, load_into
from training.rankiqa.task import (
    LossConfig,
    MOSRegressionModule,
    MOSStageTask,
    RankingModule,
    RankIQATask,
    RankIQATrainConfig,
    RankStageTask,
)
from training.validation import ValidationConfig

ROOT = Path(__file__).resolve().parents[1]
PRISTINE = ROOT / "tests" / "data" / "pristine"
KODAK_CROP = ROOT / "tests" / "data" / "kodim_crop.png"
HOLD_NONE = ValidationConfig(holdout=0)


# -- the batch hinge loss ---------------------------------------------------------------------------


def explicit_hinge(scores, ranks, groups, margin):
    """Every ordered pair (better i, worse j) of one group, written as plain loops."""
    terms = []
    for i, j in itertools.permutations(range(len(scores)), 2):
        if groups[i] == groups[j] and ranks[i] < ranks[j]:
            terms.append(max(0.0, margin - (float(scores[i]) - float(scores[j]))))
    return terms


def test_hinge_is_zero_exactly_when_every_pair_is_ordered_beyond_the_margin():
    ranks, groups = torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor([0, 0, 0, 1, 1, 1])
    # Within each group scores fall by 10.5 per rank: every pair differs by at least 10.5 > margin 10.
    spaced = torch.tensor([30.0, 19.5, 9.0, -5.0, -15.5, -26.0])
    assert batch_hinge_loss(spaced, ranks, groups, margin=10.0)["loss"].item() == 0.0
    # Groups are not compared with each other: group 1 scoring far below group 0 costs nothing.
    assert batch_hinge_loss(spaced, ranks, groups, margin=10.0)["pair_accuracy"].item() == 1.0
    # One adjacent pair 9.5 apart (< 10): the loss is positive, and exactly that pair's shortfall (0.5) summed.
    close = torch.tensor([30.0, 20.5, 9.0, -5.0, -15.5, -26.0])
    assert batch_hinge_loss(close, ranks, groups, margin=10.0, reduction="sum")["loss"].item() == pytest.approx(0.5)
    # A difference of exactly the margin is still (just) zero; a wrong order always costs.
    exact = torch.tensor([20.0, 10.0, 0.0, 20.0, 10.0, 0.0])
    assert batch_hinge_loss(exact, ranks, groups, margin=10.0)["loss"].item() == 0.0
    reversed_ = torch.tensor([0.0, 20.0, 40.0, 0.0, 20.0, 40.0])
    assert batch_hinge_loss(reversed_, ranks, groups, margin=10.0)["loss"].item() > 0


def test_batch_loss_equals_the_explicit_pairwise_sum():
    generator = torch.Generator().manual_seed(7)
    scores = torch.randn(17, generator=generator) * 8
    groups = torch.tensor([0] * 6 + [1] * 6 + [2] * 5)
    ranks = torch.cat([torch.randperm(6, generator=generator), torch.randperm(6, generator=generator), torch.arange(5)])
    terms = explicit_hinge(scores.tolist(), ranks.tolist(), groups.tolist(), margin=3.0)
    assert len(terms) == 15 + 15 + 10
    total = batch_hinge_loss(scores, ranks, groups, margin=3.0, reduction="sum")
    mean = batch_hinge_loss(scores, ranks, groups, margin=3.0, reduction="mean")
    assert total["loss"].item() == pytest.approx(sum(terms), rel=1e-5)
    assert mean["loss"].item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    assert mean["pairs"].item() == len(terms)


def test_hinge_gradient_pushes_the_better_image_up():
    scores = torch.tensor([0.0, 1.0], requires_grad=True)  # rank 0 (better) scores lower: wrong order
    batch_hinge_loss(scores, torch.tensor([0, 1]), torch.tensor([0, 0]), margin=10.0)["loss"].backward()
    assert scores.grad[0] < 0 < scores.grad[1]


# -- ranked data ------------------------------------------------------------------------------------


def test_live_ranks_order_the_images_by_distance_to_the_pristine_crop():
    # 128-pixel crops: on much smaller crops the JPEG 2000 encoder's strongest ratios give the same file.
    config = RankDataConfig(images=str(PRISTINE), style="live", crop_size=128)
    dataset = RankedDataset([KODAK_CROP], config, seed=1)
    assert len(dataset) == len(LIVE_DISTORTIONS)
    for index in range(len(dataset)):
        item = dataset[0, index]
        images, ranks = item["images"], item["ranks"]
        assert images.shape == (6, 3, 128, 128) and ranks.tolist() == [0, 1, 2, 3, 4, 5]
        distance = [(images[k] - images[0]).pow(2).mean().item() for k in range(6)]
        # Each rank is strictly further from the pristine crop than the one before, except the bank's
        # blur level 1 (sigma 0.1), which leaves the image unchanged.
        first = 2 if item["distortion"] == "gaublur" else 1
        assert distance[1] < 1e-12 if item["distortion"] == "gaublur" else distance[1] > 0
        assert all(a < b for a, b in itertools.pairwise(distance[first:])), (item["distortion"], distance)


def test_tid2013_style_uses_the_mapped_types():
    config = RankDataConfig(style="tid2013")
    assert config.level_indices == (2, 3, 4, 5)
    mapped = [name for name in TID2013_TO_BANK.values() if name is not None]
    assert len(TID2013_TO_BANK) == 24 and set(config.distortion_names) == set(mapped) and len(mapped) == 13
    dataset = RankedDataset([KODAK_CROP], RankDataConfig(style="tid2013", crop_size=32), seed=0)
    item = dataset[0, 3]
    assert item["images"].shape == (5, 3, 32, 32) and item["distortion"] == config.distortion_names[3]


def test_items_are_deterministic_in_seed_epoch_and_index():
    config = RankDataConfig(crop_size=40, distortions=("whitenoise", "jpeg"))
    first, again = RankedDataset([KODAK_CROP], config, seed=3), RankedDataset([KODAK_CROP], config, seed=3)
    for key in [(0, 0), (0, 1), (5, 1)]:
        assert torch.equal(first[key]["images"], again[key]["images"])
    assert not torch.equal(first[0, 0]["images"], first[1, 0]["images"])  # new crop and noise next epoch
    other = RankedDataset([KODAK_CROP], config, seed=4)
    assert not torch.equal(first[0, 0]["images"], other[0, 0]["images"])


def test_collate_groups_each_set():
    dataset = RankedDataset([KODAK_CROP], RankDataConfig(crop_size=32, distortions=("gaublur", "jpeg")), seed=0)
    batch = collate_ranked([dataset[0, 0], dataset[0, 1]])
    assert batch["images"].shape == (12, 3, 32, 32)
    assert batch["groups"].tolist() == [0] * 6 + [1] * 6 and batch["ranks"].tolist() == list(range(6)) * 2


def test_config_errors():
    with pytest.raises(ValueError, match="unknown distortions"):
        RankDataConfig(distortions=("blurry",))
    with pytest.raises(ValueError, match="increasing"):
        RankDataConfig(levels=(3, 2))
    with pytest.raises(ValueError, match="split_index"):
        MOSDataConfig(split_index=10)


# -- model, stage 2 and export ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def mos_data(tmp_path_factory):
    """Twenty small images (crops of the Kodak test images, degraded by noise) with made-up MOS."""
    from PIL import Image

    from qualiclip_metric.inputs import load_image

    root = tmp_path_factory.mktemp("mos")
    sources = sorted(PRISTINE.glob("*.png"))
    rows = []
    generator = torch.Generator().manual_seed(0)
    for k in range(20):
        image = load_image(sources[k % len(sources)])[:, : 64 + k, : 80 - k]
        noisy = (image + torch.randn(image.shape, generator=generator) * 0.02 * (k % 5)).clamp(0, 1)
        Image.fromarray((noisy.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(root / f"{k:02d}.png")
        rows.append((f"{k:02d}.png", 100 - 10 * (k % 5) + k / 10))
    with open(root / "mos.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([("image", "mos"), *rows])
    return root


def mos_config(mos_data, output_dir, **engine):
    return RankIQATrainConfig(
        stage="mos",
        model=ModelConfig(init="random", fc_width=16),
        mos=MOSDataConfig(images=str(mos_data), scores=str(mos_data / "mos.csv"), crop_size=32, split_index=2),
        test=CropTestConfig(crops=2, crop_size=32),
        engine=EngineConfig(output_dir=str(output_dir), optimizer="sgd", lr=1e-3, weight_decay=5e-4, **engine),
    )


def test_stage_two_trains_the_fully_connected_layers_at_ten_times_the_rate(mos_data, tmp_path):
    config = mos_config(mos_data, tmp_path)
    task = RankIQATask(config)
    module = task.build_model()
    optimizer = build_optimizer(config.engine, task.param_groups(module, config.engine.lr))
    rates = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert len(rates) == sum(1 for _ in module.parameters())  # every parameter is in a group
    for name, parameter in module.net.named_parameters():
        expected = 1e-2 if name.startswith("classifier.") else 1e-3
        assert rates[id(parameter)] == pytest.approx(expected), name
    decays = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    assert decays[id(module.net.classifier[0].weight)] == 5e-4 and decays[id(module.net.classifier[0].bias)] == 0
    # The split: training part = the complement of the protocol's test indices of split 2.
    test = random_splits(20, splits=10, test_fraction=0.2, seed=0)[2]
    assert sorted(p.name for p in task.test_paths) == [f"{k:02d}.png" for k in test]
    assert len(task.train_paths) == 16 and not set(task.train_paths) & set(task.test_paths)


def test_the_stage_picks_the_task_its_loss_and_its_rates(mos_data, tmp_path):
    mos = RankIQATask(mos_config(mos_data, tmp_path))
    assert type(mos) is MOSStageTask and type(mos.build_model()) is MOSRegressionModule
    config = RankIQATrainConfig(
        model=ModelConfig(init="random", fc_width=8),
        rank=RankDataConfig(images=str(PRISTINE), crop_size=32, distortions=("jpeg",)),
        validation=HOLD_NONE,
    )
    rank = RankIQATask(config)
    module = rank.build_model()
    assert type(rank) is RankStageTask and type(module) is RankingModule
    assert {group["lr"] for group in rank.param_groups(module, 1e-3)} == {1e-3}  # stage 1: every layer alike
    batch = rank.collate([rank.build_dataset()[0, index] for index in range(2)])
    assert batch["images"].shape == (12, 3, 32, 32) and batch["groups"].tolist() == [0] * 6 + [1] * 6
    assert set(module(batch)) >= {"loss", "pair_accuracy"}


def test_stage_two_runs_validates_and_exports_in_mos_units(mos_data, tmp_path):
    from training.engine import Trainer

    config = mos_config(mos_data, tmp_path, steps=2, batch_size=4, num_workers=0, progress=False, log_every=1)
    task = RankIQATask(config)
    summary = Trainer(task, config.engine, config).fit()
    assert summary["step"] == 2 and set(summary["validation"]) >= {"test_srcc", "test_plcc"}
    saved = json.loads((tmp_path / "export" / "config.json").read_text())
    train_mos = np.asarray(task.train_scores)
    assert saved["target_mean"] == pytest.approx(train_mos.mean()) and saved["fc_width"] == 16
    model = RankIQA.from_pretrained(tmp_path / "export")
    image = torch.rand(3, 36, 40)
    one_crop = RankIQA(model.net, CropTestConfig(crops=1, crop_size=32), saved["target_mean"], saved["target_std"])
    # One 32-pixel crop of a 36 x 40 image; the score is the network's output mapped back to MOS units.
    every_crop = torch.stack([image[:, t : t + 32, s : s + 32] for t in range(5) for s in range(9)])
    with torch.no_grad():
        outputs = model.net(every_crop)
    normalised = (one_crop(image).item() - saved["target_mean"]) / saved["target_std"]
    assert torch.isclose(outputs, torch.tensor(normalised), atol=1e-4).any()


def test_export_round_trip_scores_like_the_network(tmp_path):
    config = RankIQATrainConfig(
        model=ModelConfig(init="random", fc_width=8, init_seed=3), test=CropTestConfig(crops=3, crop_size=32)
    )
    task_export = RankIQATask(replace(config, rank=RankDataConfig(images=str(PRISTINE)), validation=HOLD_NONE))
    net = build_model(config.model).eval()
    task_export.export(RankingModule(net, LossConfig()), tmp_path)
    loaded = RankIQA.from_pretrained(tmp_path)
    image = torch.rand(3, 48, 64, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(0)
    from training.rankiqa.data import random_crops

    expected = net(random_crops(image, 32, 3, generator)).mean().item()
    assert loaded(image).item() == pytest.approx(expected, abs=1e-5)
    assert loaded(image[None]).item() == loaded(image).item()  # crops depend on the seed only
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["provenance"]["trained_with"] == "training.rankiqa" and set(saved["files"]) == {"model.safetensors"}
    weights = tmp_path / "model.safetensors"
    damaged = bytearray(weights.read_bytes())
    damaged[-1] ^= 0xFF
    weights.write_bytes(bytes(damaged))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: sha256 mismatch"):
        RankIQA.from_pretrained(tmp_path)


def test_random_init_is_seeded_and_imagenet_failure_is_explained(monkeypatch, caplog):
    first = build_model(ModelConfig(init="random", fc_width=8, init_seed=5))
    again = build_model(ModelConfig(init="random", fc_width=8, init_seed=5))
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values(), strict=True))

    def offline(arch):
        raise OSError("no network")

    monkeypatch.setattr(model_module, "_imagenet_state", offline)
    with pytest.raises(RuntimeError, match="could not obtain torchvision's ImageNet vgg16 weights"):
        build_model(ModelConfig(init="imagenet"))
    with caplog.at_level(logging.WARNING):
        fallback = build_model(ModelConfig(init="imagenet", allow_random_fallback=True, fc_width=8))
    assert isinstance(fallback, RankIQANet) and "FALLING BACK TO RANDOM" in caplog.text


def test_torchvision_state_dict_loads_with_a_fresh_head():
    import torchvision

    reference = torchvision.models.vgg16()
    net = RankIQANet()
    load_into(net, reference.state_dict(), "torchvision vgg16")
    assert torch.equal(net.features[0].weight, reference.features[0].weight)
    assert torch.equal(net.classifier[3].weight, reference.classifier[3].weight)
    assert net.classifier[6].weight.shape == (1, 4096)


# -- the entry points, as subprocesses ---------------------------------------------------------------


def run(args, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="module")
def smoke_run(module_tmp_path):
    output = module_tmp_path / "smoke"
    result = run(
        ["-m", "training.rankiqa", "--config", "training/rankiqa/configs/smoke.yaml", f"engine.output_dir={output}"],
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return output, result


def test_stage_one_smoke_through_the_entry_point(smoke_run):
    output, result = smoke_run
    records = read_metrics(output / "metrics.jsonl")
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3]
    # 2 sets of 6 ranks a step: 2 x 15 ordered pairs; the hinge with margin 10 starts near 10.
    assert all(r["pairs"] == 30 for r in train) and 0 < train[0]["loss"] <= 30
    assert "synthetic_srcc" in records[-1] and (output / "export" / "model.safetensors").is_file()
    assert json.loads(result.stdout[result.stdout.index("{") :])["step"] == 3


def test_scoring_command_reports_a_corrupt_file_and_scores_the_rest(smoke_run, tmp_path):
    output, _ = smoke_run
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    scores = tmp_path / "scores.csv"
    files = [str(KODAK_CROP), str(corrupt), str(PRISTINE / "kodim05_crop.png")]
    result = run(["-m", "training.rankiqa.score", "--weights", str(output / "export"), *files, "--output", str(scores)])
    assert result.returncode == 1, result.stderr[-2000:]
    with open(scores, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["path", "score", "width", "height", "error"]
    assert [row["path"] for row in rows] == files
    assert rows[1]["score"] == "" and "corrupt.png" in rows[1]["error"]
    for row in (rows[0], rows[2]):
        assert (
            row["error"] == "" and row["width"] == "128" and row["height"] == "128" and np.isfinite(float(row["score"]))
        )
    # The command's score equals the class's on the same export and test settings.
    model = RankIQA.from_pretrained(output / "export")
    assert float(rows[0]["score"]) == pytest.approx(model.score_files([KODAK_CROP])[0].score, abs=1e-5)
