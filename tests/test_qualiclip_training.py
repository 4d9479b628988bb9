"""QualiCLIP training pieces: the margin ranking losses and the overlapping crop pairs."""

import itertools
from pathlib import Path

import pytest
import torch

from training.qualiclip.data import NOT_MONOTONIC, CropPairConfig, CropPairDataset, sample_overlapping_crops
from training.qualiclip.losses import QualiCLIPLossConfig, prompt_similarities, qualiclip_losses

KODAK_CROP = Path(__file__).parent / "data" / "kodim_crop.png"


# -- losses ---------------------------------------------------------------------------------------


def ordered_similarities(batch=2, levels=5, pairs=7, step=0.1):
    """Positive similarity falling and negative rising by ``step`` per level; crops identical."""
    base = torch.linspace(0, -step * (levels - 1), levels)
    positive = (0.3 + base).view(1, 1, levels, 1).expand(batch, 2, levels, pairs).clone()
    negative = (0.1 - base).view(1, 1, levels, 1).expand(batch, 2, levels, pairs).clone()
    return positive, negative


def explicit_losses(positive, negative, config):
    """The documented formulas, written as plain loops."""
    b, _, levels, pairs = positive.shape
    cons, pos, neg = [], [], []
    for k, i, p in itertools.product(range(b), range(levels), range(pairs)):
        for s in (positive, negative):
            cons.append(max(0.0, abs(float(s[k, 0, i, p] - s[k, 1, i, p])) - config.margin_cons))
    for k, c, p in itertools.product(range(b), range(2), range(pairs)):
        for i, j in itertools.combinations(range(levels), 2):
            pos.append(max(0.0, config.margin_pos - float(positive[k, c, i, p] - positive[k, c, j, p])))
            neg.append(max(0.0, config.margin_neg - float(negative[k, c, j, p] - negative[k, c, i, p])))
    # L_cons averages the sum of its two hinges over (k, i, p): pairs of entries in ``cons``.
    return 2 * sum(cons) / len(cons), sum(pos) / len(pos), sum(neg) / len(neg)


def test_zero_when_ranked_beyond_the_margins():
    positive, negative = ordered_similarities(step=0.1)
    losses = qualiclip_losses(positive, negative, QualiCLIPLossConfig(margin_pos=0.05, margin_neg=0.05))
    assert all(value.item() == 0.0 for value in losses.values())
    tight = qualiclip_losses(positive, negative, QualiCLIPLossConfig(margin_pos=0.15, margin_neg=0.05))
    assert tight["pos"] > 0 and tight["neg"] == 0  # consecutive levels differ by 0.1 < 0.15


def test_batch_losses_equal_the_explicit_formulas():
    generator = torch.Generator().manual_seed(4)
    positive, negative = (torch.rand(2, 2, 4, 3, generator=generator) * 0.4 for _ in range(2))
    config = QualiCLIPLossConfig(margin_cons=0.02, margin_pos=0.05, margin_neg=0.03, weight_cons=0.5)
    losses = qualiclip_losses(positive, negative, config)
    cons, pos, neg = explicit_losses(positive, negative, config)
    assert losses["cons"].item() == pytest.approx(cons, abs=1e-6)
    assert losses["pos"].item() == pytest.approx(pos, abs=1e-6)
    assert losses["neg"].item() == pytest.approx(neg, abs=1e-6)
    assert losses["loss"].item() == pytest.approx(0.5 * cons + pos + neg, abs=1e-6)


def test_inconsistent_crops_are_penalised_and_gradients_flow():
    positive, negative = ordered_similarities()
    positive = positive.clone().requires_grad_(True)
    shifted = positive + torch.tensor([0.0, 0.2]).view(1, 2, 1, 1)  # crop b scores 0.2 higher
    losses = qualiclip_losses(shifted, negative, QualiCLIPLossConfig(margin_cons=0.05))
    assert losses["cons"].item() == pytest.approx(0.15, abs=1e-6)
    losses["loss"].backward()
    assert positive.grad.abs().sum() > 0


def test_prompt_similarities_split_positive_and_negative():
    features = torch.nn.functional.normalize(torch.randn(3, 16), dim=-1)
    prompts = torch.nn.functional.normalize(torch.randn(4, 16), dim=-1)
    positive, negative = prompt_similarities(features, prompts)
    assert torch.allclose(positive, features @ prompts[[0, 2]].T) and torch.allclose(
        negative, features @ prompts[[1, 3]].T
    )


def test_loss_input_errors():
    with pytest.raises(ValueError, match="batch, 2 crops, levels, pairs"):
        qualiclip_losses(torch.zeros(2, 3, 5, 7), torch.zeros(2, 3, 5, 7))
    with pytest.raises(ValueError, match="at least 2 levels"):
        qualiclip_losses(torch.zeros(2, 2, 1, 7), torch.zeros(2, 2, 1, 7))


# -- crop pairs -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("low", "high"), [(0.1, 0.3), (0.5, 0.9), (0.0, 0.05)])
def test_every_crop_pair_satisfies_the_overlap_bound(low, high):
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        (t1, l1), (t2, l2) = sample_overlapping_crops(200, 300, 64, low, high, generator)
        assert 0 <= min(t1, t2) and max(t1, t2) + 64 <= 200 and 0 <= min(l1, l2) and max(l1, l2) + 64 <= 300
        shared = max(0, 64 - abs(t1 - t2)) * max(0, 64 - abs(l1 - l2)) / 64**2
        assert low <= shared <= high


def test_crop_errors():
    with pytest.raises(ValueError, match="smaller than the 64 x 64 crop"):
        sample_overlapping_crops(50, 300, 64, 0.1, 0.5, torch.Generator())
    with pytest.raises(ValueError, match="max_overlap"):
        CropPairConfig(min_overlap=0.6, max_overlap=0.5)
    with pytest.raises(ValueError, match="unknown distortions"):
        CropPairConfig(distortions=("blurry",))


def test_defaults_leave_out_non_monotonic_distortions():
    names = CropPairConfig().distortion_names
    assert len(names) == 22 and not set(NOT_MONOTONIC) & set(names)
    assert CropPairConfig(levels=3).level_indices == (1, 3, 5)
    assert CropPairConfig().level_indices == (1, 2, 3, 4, 5)


def test_dataset_items_are_deterministic_and_ordered(tmp_path):
    config = CropPairConfig(crop_size=64, levels=5, distortions=("gaublur",))
    dataset = CropPairDataset(KODAK_CROP, config, seed=3)
    item = dataset[0]
    images = item["images"]
    assert images.shape == (2, 5, 3, 64, 64) and 0 <= images.min() and images.max() <= 1
    assert item["distortions"] == ["gaublur"] and item["levels"] == (1, 2, 3, 4, 5)
    assert torch.equal(dataset[0]["images"], images)
    dataset.set_epoch(1)
    assert not torch.equal(dataset[0]["images"], images)  # new crops in a new epoch
    # Blur grows level by level: each level is further from the mildest one.
    distance = [(images[:, level] - images[:, 0]).pow(2).mean().item() for level in range(5)]
    assert distance == sorted(distance) and distance[-1] > distance[1] > 0


def test_composed_distortions_come_from_distinct_groups():
    from training.degradations import DISTORTIONS

    dataset = CropPairDataset(KODAK_CROP, CropPairConfig(crop_size=48, levels=2, composed=3), seed=1)
    for index_seed in range(3):
        dataset.set_epoch(index_seed)
        names = dataset[0]["distortions"]
        assert len(names) == 3 and len({DISTORTIONS[n].group for n in names}) == 3


# -- where the weights start ------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")
def test_every_local_starting_point_gives_the_same_scorer(clip_parts, official_pth, model, tmp_path):
    """OpenAI's TorchScript archive, an open_clip safetensors state dict and a QualiCLIP .pth start alike."""
    import open_clip
    from safetensors.torch import save_file

    from qualiclip_metric.text import quiet_logging
    from training.qualiclip.model import ModelConfig, build_scorer

    clip_state, _ = clip_parts
    safetensors_path = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in clip_state.items()}, str(safetensors_path))
    with quiet_logging():
        clip = open_clip.create_model("RN50-quickgelu", pretrained=None)
    clip.load_state_dict(clip_state)
    archive = torch.jit.trace_module(clip.eval(), {"encode_image": torch.rand(1, 3, 224, 224)})
    torchscript_path = tmp_path / "RN50.pt"
    torch.jit.save(archive, str(torchscript_path))
    del archive, clip

    images = torch.rand(2, 3, 96, 128, generator=torch.Generator().manual_seed(5))
    expected = model(images)  # the library's scorer on the same weights and prompts
    for path in (torchscript_path, safetensors_path, official_pth):
        scorer, text_state = build_scorer(ModelConfig(init=str(path)))
        assert text_state is not None, path
        assert torch.allclose(scorer(images), expected, atol=1e-6), path


def test_openai_start_without_network_says_what_to_do():
    from qualiclip_metric.errors import CheckpointError
    from training.qualiclip.model import load_clip_weights

    with pytest.raises(CheckpointError, match="model.init=random"):
        load_clip_weights("openai")
