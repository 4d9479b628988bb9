"""Re-IQA baseline: InfoNCE, MoCo queue and momentum, chunk crops and swapping, ridge regressor, commands."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.engine import load_training_state
from training.reiqa.data import ChunkConfig, ChunkDataset, collate_chunks
from training.reiqa.features import encoder_from_spec
from training.reiqa.model import CheckpointError, MoCoConfig, QualityMoCo, info_nce, load_trunk
from training.reiqa.regressor import RidgeRegressor, _ridge_solutions, split_evaluation
from training.reiqa.task import export_encoder

ROOT = Path(__file__).resolve().parents[1]
PRISTINE = ROOT / "tests" / "data" / "pristine"
SMOKE = ROOT / "training" / "reiqa" / "configs" / "smoke.yaml"


def tiny_moco(**changes: object) -> QualityMoCo:
    options = dict(arch="resnet18", hidden_dim=32, embedding_dim=8, queue_size=16, key_bn_groups=2)
    options.update(changes)
    return QualityMoCo(MoCoConfig(**options), seed=0)


def run_module(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=300
    )


# -- InfoNCE ----------------------------------------------------------------------------------------


def test_info_nce_equals_the_explicit_formula():
    generator = torch.Generator().manual_seed(3)
    unit = lambda *shape: torch.nn.functional.normalize(torch.randn(*shape, generator=generator), dim=-1)  # noqa: E731
    query, key, negatives = unit(5, 6), unit(5, 6), unit(7, 6)
    temperature = 0.2
    total = 0.0
    for i in range(5):
        positive = math.exp(sum(float(query[i, d] * key[i, d]) for d in range(6)) / temperature)
        others = sum(
            math.exp(sum(float(query[i, d] * negatives[j, d]) for d in range(6)) / temperature) for j in range(7)
        )
        total += -math.log(positive / (positive + others))
    loss, logits = info_nce(query, key, negatives, temperature)
    assert loss.item() == pytest.approx(total / 5, rel=1e-5)
    assert logits.shape == (5, 8)


def test_info_nce_decreases_on_a_fixed_batch():
    config = ChunkConfig(crop_size=32, n_aug=2, distortions=("gaublur", "whitenoise", "jpeg"))
    dataset = ChunkDataset(PRISTINE, config, seed=0)
    batch = collate_chunks([dataset[0, 0]])
    model = tiny_moco(momentum=0.9, queue_size=64)
    model.train()
    queue = model.queue.clone()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    losses = []
    for _ in range(5):
        with torch.no_grad():  # the same negatives every step: only the encoders change
            model.queue.copy_(queue)
            model.queue_ptr.zero_()
        loss = model(batch)["loss"]
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[-1] < losses[0] - 0.1, losses


# -- MoCo queue and momentum encoder ----------------------------------------------------------------


def test_queue_is_first_in_first_out():
    model = tiny_moco(queue_size=5, embedding_dim=2)
    expected = [tuple(row) for row in model.queue.tolist()]
    batches = [torch.tensor([[float(10 * b + i), -1.0] for i in range(n)]) for b, n in enumerate((2, 2, 3, 7))]
    oldest = 0
    for keys in batches:
        for row in keys.tolist():  # overwrite the oldest slot, one key at a time
            expected[oldest] = tuple(row)
            oldest = (oldest + 1) % 5
        model.enqueue(keys)
        assert [tuple(row) for row in model.queue.tolist()] == expected
        assert int(model.queue_ptr) == oldest


def test_momentum_update_is_exact_and_happens_in_forward():
    model = tiny_moco(momentum=0.75)
    with torch.no_grad():
        for parameter in [*model.trunk.parameters(), *model.head.parameters()]:
            parameter.add_(0.01 * torch.randn_like(parameter))
    keys_before = [p.detach().clone() for p in [*model.key_trunk.parameters(), *model.key_head.parameters()]]
    queries = [p.detach().clone() for p in [*model.trunk.parameters(), *model.head.parameters()]]
    model.train()
    images = torch.rand(4, 3, 32, 32)
    model({"query": images, "key": images.flip(-1)})
    after = [p.detach() for p in [*model.key_trunk.parameters(), *model.key_head.parameters()]]
    for key, query, new in zip(keys_before, queries, after, strict=True):
        torch.testing.assert_close(new, 0.75 * key + 0.25 * query, rtol=0, atol=1e-6)
    assert not any(p.requires_grad for p in model.key_trunk.parameters())
    assert int(model.queue_ptr) == 4  # the four keys were enqueued


def test_eval_forward_changes_neither_queue_nor_key_encoder():
    model = tiny_moco()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    with torch.no_grad():
        model({"query": torch.rand(2, 3, 32, 32), "key": torch.rand(2, 3, 32, 32)})
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name


# -- chunks: overlap and swapping -------------------------------------------------------------------


def overlap(first, second, size):
    """Independent formula: intersection of the two boxes over the area of one."""
    rows = min(first[0], second[0]) + size - max(first[0], second[0])
    cols = min(first[1], second[1]) + size - max(first[1], second[1])
    return max(rows, 0) * max(cols, 0) / (size * size)


def test_every_crop_pair_overlaps_within_the_bounds():
    config = ChunkConfig(crop_size=40, n_aug=1, distortions=("gaublur",), min_overlap=0.1, max_overlap=0.3)
    dataset = ChunkDataset(PRISTINE, config, seed=5)
    count = 0
    for epoch in range(3):
        for index in range(len(dataset)):
            item = dataset[epoch, index]
            assert item["query"].shape == item["key"].shape == (config.pairs_per_item, 3, 40, 40)
            for pair in item["pairs"]:
                assert 0.1 <= overlap(pair["query_corner"], pair["key_corner"], 40) <= 0.3
                count += 1
    assert count == 3 * len(dataset) * config.pairs_per_item


def position_image(path: Path, size: int = 120) -> None:
    """R encodes the row, G the column, B is constant: a crop's mean colour says where it was cut."""
    ramp = np.arange(size, dtype=np.float64) / (size - 1)
    pixels = np.zeros((size, size, 3), dtype=np.uint8)
    pixels[..., 0] = np.round(255 * ramp[:, None])
    pixels[..., 1] = np.round(255 * ramp[None, :])
    pixels[..., 2] = 128
    Image.fromarray(pixels).save(path)


def test_swapping_pairs_the_right_crops(tmp_path):
    position_image(tmp_path / "ramp.png")
    size = 40
    config = ChunkConfig(crop_size=size, n_aug=3, distortions=("gaublur", "whitenoise", "jpeg"), scales=(1.0,))
    item = ChunkDataset(tmp_path, config, seed=1)[0, 0]
    image = torch.from_numpy(np.asarray(Image.open(tmp_path / "ramp.png"), dtype=np.float32) / 255).permute(2, 0, 1)
    versions = config.versions
    pairs, query, key = item["pairs"], item["query"], item["key"]
    assert [p["version"] for p in pairs] == [*range(versions), *range(versions)]
    assert len({p["distortion"] for p in pairs[1:versions]}) == config.n_aug
    for j in range(versions):
        # pair V + j is pair j with query and key exchanged, the same degraded crops
        assert torch.equal(query[versions + j], key[j]) and torch.equal(key[versions + j], query[j])
        assert pairs[versions + j]["query_corner"] == pairs[j]["key_corner"]
        for p in (j, versions + j):
            for tensor, corner, other in (
                (query[p], "query_corner", "key_corner"),
                (key[p], "key_corner", "query_corner"),
            ):
                top, left = pairs[p][corner]
                if j == 0:  # the pristine version is exactly the image cut at the recorded corner
                    assert torch.allclose(tensor, image[:, top : top + size, left : left + size], atol=1e-6)
                decoded = (tensor[0].mean() * 119 - (size - 1) / 2, tensor[1].mean() * 119 - (size - 1) / 2)
                right = math.dist(decoded, pairs[p][corner])
                wrong = math.dist(decoded, pairs[p][other])
                assert right < 3 and right < wrong, (j, p, decoded, pairs[p][corner], pairs[p][other])


def test_items_depend_only_on_seed_epoch_and_index():
    config = ChunkConfig(crop_size=32, n_aug=2, distortions=("gaublur", "whitenoise", "pixelate"))
    first, second = ChunkDataset(PRISTINE, config, seed=2), ChunkDataset(PRISTINE, config, seed=2)
    a, b = first[1, 2], second[1, 2]
    assert torch.equal(a["query"], b["query"]) and torch.equal(a["key"], b["key"]) and a["pairs"] == b["pairs"]
    assert not torch.equal(first[2, 2]["query"], a["query"])


# -- checkpoints ------------------------------------------------------------------------------------


def test_trunks_load_from_torchvision_and_moco_layouts(tmp_path):
    import torchvision

    reference = torchvision.models.resnet18(weights=None)
    torch.save(reference.state_dict(), tmp_path / "torchvision.pth")
    moco = {f"module.encoder_q.{k}": v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    moco.update(
        {"module.encoder_q.fc.0.weight": torch.zeros(512, 512), "module.encoder_k.conv1.weight": torch.zeros(1)}
    )
    torch.save({"state_dict": moco, "epoch": 200}, tmp_path / "moco.pth.tar")
    for name in ("torchvision.pth", "moco.pth.tar"):
        trunk = load_trunk("resnet18", tmp_path / name)
        assert torch.equal(trunk.conv1.weight, reference.conv1.weight)
        assert torch.equal(trunk.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var)
    torch.save({"conv1.weight": reference.conv1.weight}, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="missing"):
        load_trunk("resnet18", tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="no such weights file"):
        load_trunk("resnet18", tmp_path / "absent.pth")
    with pytest.raises(ValueError, match="local file"):
        MoCoConfig(init="checkpoint")


# -- regressor --------------------------------------------------------------------------------------


def test_ridge_recovers_a_known_linear_map():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(300, 12)) * rng.uniform(0.5, 20, size=12) + rng.normal(size=12)
    weights = rng.normal(size=12)
    target = features @ weights + 7.0 + 1e-3 * rng.normal(size=300)
    model = RidgeRegressor().fit(features[:200], target[:200])
    np.testing.assert_allclose(model.weights / model.scale, weights, rtol=0, atol=1e-2)
    np.testing.assert_allclose(model.predict(features[200:]), target[200:], atol=5e-2)
    assert model.alpha == min(model.alphas)  # noise-free data wants the least regularisation
    result = split_evaluation(features, target, splits=3)
    assert result["splits"]["median"]["srcc"] > 0.999 and len(result["splits"]["per_split"]) == 3


@pytest.mark.parametrize("shape", [(30, 50), (60, 5)])  # the dual (N < D) and the primal path
def test_ridge_solutions_match_the_normal_equations(shape):
    rng = np.random.default_rng(2)
    x, y, alphas = rng.normal(size=shape), rng.normal(size=shape[0]), np.array([0.1, 10.0])
    solutions = _ridge_solutions(x, y, alphas)
    for alpha, solution in zip(alphas, solutions, strict=True):
        np.testing.assert_allclose(solution, np.linalg.solve(x.T @ x + alpha * np.eye(shape[1]), x.T @ y), atol=1e-10)


def test_ridge_matches_the_normal_equations_on_standardised_features():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(40, 60)) * rng.uniform(0.5, 5, size=60), rng.normal(size=40)
    model = RidgeRegressor(alphas=(10.0,)).fit(x, y)
    standard = (x - x.mean(0)) / x.std(0)
    expected = np.linalg.solve(standard.T @ standard + 10.0 * np.eye(60), standard.T @ (y - y.mean()))
    np.testing.assert_allclose(model.weights, expected, atol=1e-8)
    assert model.intercept == pytest.approx(y.mean())


def test_content_only_features_leak_unless_splits_follow_the_contents():
    # 40 reference contents x 6 distortions; features and scores depend on the content alone. A regressor
    # can only recall contents it was fitted on, so leaky splits look excellent and grouped ones show chance.
    rng = np.random.default_rng(0)
    content = np.repeat(np.arange(40), 6)
    features = rng.normal(size=(40, 64))[content] + 0.05 * rng.normal(size=(content.size, 64))
    scores = rng.normal(size=40)[content] + 0.01 * rng.normal(size=content.size)
    leaky = split_evaluation(features, scores, splits=5)
    grouped = split_evaluation(features, scores, splits=5, groups=[f"ref{c}" for c in content])
    assert leaky["splits"]["median"]["srcc"] > 0.9
    assert abs(grouped["splits"]["median"]["srcc"]) < 0.35 and grouped["protocol"]["by_content"]
    assert all(row["alpha"] in RidgeRegressor().alphas for row in grouped["splits"]["per_split"])


def test_saved_regressor_predicts_alike_and_refuses_damage(tmp_path):
    rng = np.random.default_rng(3)
    features, target = rng.normal(size=(50, 8)), rng.normal(size=50)
    model = RidgeRegressor().fit(features, target)
    model.save(tmp_path / "regressor", {"fitted_on": {"count": 50}})
    loaded, record = RidgeRegressor.load(tmp_path / "regressor")
    np.testing.assert_array_equal(loaded.predict(features), model.predict(features))
    assert record["fitted_on"] == {"count": 50} and set(record["files"]) == {"regressor.safetensors"}
    tensors = tmp_path / "regressor" / "regressor.safetensors"
    damaged = bytearray(tensors.read_bytes())
    damaged[-1] ^= 0xFF
    tensors.write_bytes(bytes(damaged))
    with pytest.raises(CheckpointError, match=r"regressor\.safetensors: sha256 mismatch"):
        RidgeRegressor.load(tmp_path / "regressor")
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "notes.txt").write_text("kept")
    with pytest.raises(FileExistsError, match="holds other files"):
        model.save(tmp_path / "shared", {})
    assert (tmp_path / "shared" / "notes.txt").read_text() == "kept"


def test_encoder_export_loads_and_refuses_damage(tmp_path):
    moco = tiny_moco()
    export_encoder(moco, tmp_path, {"trained_with": "a test"})
    trunk, info = encoder_from_spec(str(tmp_path))
    assert info["arch"] == "resnet18" and torch.equal(trunk.conv1.weight, moco.trunk.conv1.weight)
    saved = json.loads((tmp_path / "quality_encoder.json").read_text())
    assert saved["provenance"] == {"trained_with": "a test"}
    assert set(saved["files"]) == {"quality_encoder.safetensors", "projection_head.safetensors"}
    weights = tmp_path / "quality_encoder.safetensors"
    damaged = bytearray(weights.read_bytes())
    damaged[-1] ^= 0xFF
    weights.write_bytes(bytes(damaged))
    with pytest.raises(CheckpointError, match=r"quality_encoder\.safetensors: sha256 mismatch"):
        encoder_from_spec(str(tmp_path))


def test_ridge_regularises_more_when_features_are_noise():
    rng = np.random.default_rng(1)
    model = RidgeRegressor().fit(rng.normal(size=(60, 200)), rng.normal(size=60))
    assert model.alpha >= 100


# -- commands ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke_run(module_tmp_path):
    output = module_tmp_path / "smoke"
    result = run_module(
        "training.reiqa", "--config", str(SMOKE), f"engine.output_dir={output}", "engine.progress=false"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return output


def test_smoke_training_through_the_entry_point(smoke_run):
    records = [json.loads(line) for line in (smoke_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) for r in records if r["split"] == "train")
    config = json.loads((smoke_run / "export" / "quality_encoder.json").read_text())
    assert config["arch"] == "resnet18" and config["embedding_dim"] == 16
    trunk = load_trunk("resnet18", smoke_run / "export" / "quality_encoder.safetensors")
    state = load_training_state(sorted((smoke_run / "checkpoints").glob("step_*.pt"))[-1])["model"]
    assert torch.equal(trunk.conv1.weight, state["trunk.conv1.weight"])
    # 4 steps of 2 chunks of 12 pairs each were enqueued
    assert state["queue"].shape == (64, 16) and int(state["queue_ptr"]) == (4 * 2 * 12) % 64


def test_evaluate_and_score_commands(smoke_run, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(20):
        noise = rng.uniform(0, 1)
        pixels = np.clip(
            0.5 + 0.2 * np.sin(np.arange(64) / 5)[None, :, None] + noise * rng.normal(size=(64, 64, 3)) * 0.3, 0, 1
        )
        Image.fromarray((pixels * 255).astype(np.uint8)).save(images / f"{i:02d}.png")
        rows.append((f"{i:02d}.png", 100 * (1 - noise)))
    with open(tmp_path / "mos.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([("image", "mos"), *rows])
    result = run_module(
        "training.reiqa.evaluate", "--images", str(images), "--scores", str(tmp_path / "mos.csv"),
        "--content", "random:1", "--quality", str(smoke_run / "export"), "--arch", "resnet18",
        "--save-regressor", str(tmp_path / "regressor"), "--output", str(tmp_path / "eval.json"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["feature_dim"] == 4 * 512 and report["scored"] == 20 and len(report["splits"]["per_split"]) == 10
    assert set(report["splits"]["median"]) >= {"srcc", "plcc"}

    (images / "broken.png").write_bytes(b"not an image at all")
    score = run_module(
        "training.reiqa.score",
        str(images),
        "--regressor",
        str(tmp_path / "regressor"),
        "--output",
        str(tmp_path / "s.csv"),
    )
    assert score.returncode == 1, score.stderr[-3000:]
    with open(tmp_path / "s.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert list(table[0]) == ["path", "score", "width", "height", "error"]
    assert len(table) == 21
    broken = [row for row in table if row["path"].endswith("broken.png")]
    assert len(broken) == 1 and broken[0]["error"] and broken[0]["score"] == ""
    good = [row for row in table if not row["error"]]
    assert len(good) == 20 and all(math.isfinite(float(row["score"])) for row in good)
    assert {(row["width"], row["height"]) for row in good} == {("64", "64")}
    # The same writer as `qualiclip score`: JSON lines by suffix, and an unwritable output refused first.
    lines = run_module("training.reiqa.score", str(images), "--regressor", str(tmp_path / "regressor"), "-o",
                       str(tmp_path / "s.jsonl"))  # fmt: skip
    assert lines.returncode == 1 and len((tmp_path / "s.jsonl").read_text().splitlines()) == 21
    # --resume as in `qualiclip score`: a file cut after ten rows is completed to the very bytes of a full run.
    full = (tmp_path / "s.csv").read_bytes()
    (tmp_path / "r.csv").write_bytes(b"".join(full.splitlines(keepends=True)[:11]))
    resumed = run_module("training.reiqa.score", str(images), "--regressor", str(tmp_path / "regressor"), "-o",
                         str(tmp_path / "r.csv"), "--resume")  # fmt: skip
    assert resumed.returncode == 1 and "10 kept, 11 to score" in resumed.stderr, resumed.stderr[-2000:]
    assert (tmp_path / "r.csv").read_bytes() == full
    refused = run_module("training.reiqa.score", str(images), "--regressor", str(tmp_path / "absent"), "-o",
                         str(tmp_path / "missing" / "s.csv"))  # fmt: skip
    assert refused.returncode == 2 and "does not exist" in refused.stderr
