"""The fast inference path: BatchNorm folded, channels-last, weights in the compute dtype, optionally compiled."""

import copy
import pickle

import pytest
import torch
from conftest import make_images
from torch import nn

from qualiclip_metric import QualiCLIP
from qualiclip_metric.fused import FusedTrunk, fold_batchnorm

#: fp32 agreement with pyiqa's implementation. Channels-last convolutions sum in another order: on the
#: random test weights one image in a few moves by up to 2e-5 (the standard path keeps 1e-5).
TOLERANCE = 5e-5


@pytest.fixture
def fast_model(official_pth):
    return QualiCLIP.from_pretrained(official_pth, fast=True)


def test_fold_batchnorm_matches_convolution_then_norm():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
    norm = nn.BatchNorm2d(16).eval()
    with torch.no_grad():
        norm.running_mean.normal_(0, 2)
        norm.running_var.uniform_(0.1, 4)
        norm.weight.normal_(1, 0.5)
        norm.bias.normal_(0, 1)
    x = torch.randn(2, 8, 15, 17)
    expected = norm(conv(x))
    torch.testing.assert_close(fold_batchnorm(conv, norm)(x), expected, rtol=1e-5, atol=1e-5)


def test_fused_trunk_has_no_batchnorm_and_is_channels_last(model):
    trunk = FusedTrunk(model.visual)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in trunk.modules())
    output = trunk(make_images(1, 64, 96))
    assert output.shape == (1, 2048, 2, 3)
    assert output.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("size", [(224, 224), (97, 131)])
def test_fast_scores_match_pyiqa_and_the_standard_path(model, fast_model, pyiqa_reference, size):
    images = make_images(4, *size, seed=3)
    with torch.inference_mode():
        expected = pyiqa_reference(1.0)(images).squeeze(1)
        standard = model(images)
        fast = fast_model(images)
    assert fast_model._fused_cache is not None  # the fast path really ran
    assert (fast - expected).abs().max() <= TOLERANCE
    assert (fast - standard).abs().max() <= TOLERANCE
    assert expected.max() - expected.min() > 0.01


def test_fast_bf16_is_as_accurate_as_autocast(model, official_pth):
    """bf16 weights without autocast lose no more than autocast does, at the trunk's output.

    Random weights amplify rounding into the scores far more than trained ones (see test_model), so
    the 2e-3 score tolerance is measured on CLIVE in benchmarks/bench_inference.py, not here.
    """
    images = make_images(6, 128, 160, seed=4)
    normalized = (images - model.mean) / model.std
    tower = model.visual
    trunk = tower.trunk
    fused = FusedTrunk(tower, torch.bfloat16)
    with torch.no_grad():
        reference = trunk(normalized)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = trunk(normalized).float()
        fast = fused(normalized)
    assert fused.tower.conv1.weight.dtype == fast.dtype == torch.bfloat16

    def relative_error(x):
        return ((x.float() - reference).norm() / reference.norm()).item()

    assert relative_error(fast) <= max(1.25 * relative_error(autocast), 1e-3)
    assert relative_error(fast) < 0.02

    bf16 = QualiCLIP.from_pretrained(official_pth, fast=True, precision="bf16")
    with torch.no_grad():
        scores, fp32_scores = bf16(images), model(images)
    assert bf16._fused_cache[1].dtype == torch.bfloat16
    assert (scores - fp32_scores).abs().max() < 0.05  # the bound test_model sets for autocast bf16


def test_fast_path_follows_weight_updates(official_pth, model):
    fast = QualiCLIP.from_pretrained(official_pth, fast=True)
    images = make_images(2, 96, 96, seed=5)
    with torch.no_grad():
        before = fast(images)
        fast.visual.layer2[0].bn2.running_mean.add_(0.5)  # in place
        after_in_place = fast(images)
        fast.load_state_dict(model.state_dict())  # copied back
        restored = fast(images)
        fast.fast = False
        standard_restored = fast(images)
    assert (after_in_place - before).abs().max() > 1e-4
    assert (restored - before).abs().max() <= 1e-6
    assert (restored - standard_restored).abs().max() <= 1e-6


def test_calls_that_need_gradients_take_the_standard_path(model, fast_model):
    images = make_images(2, 64, 64, seed=6)
    gradients = []
    for network in (model, fast_model):
        x = images.clone().requires_grad_()
        network(x).sum().backward()
        gradients.append(x.grad)
    assert fast_model._fused_cache is None
    assert torch.equal(gradients[0], gradients[1])


def test_fast_mode_leaves_state_dict_copies_and_pickles_alone(model, fast_model):
    with torch.no_grad():
        fast_model(make_images(1, 64, 64))
    assert fast_model.state_dict().keys() == model.state_dict().keys()
    assert "fast" in repr(fast_model)
    for clone in (copy.deepcopy(fast_model), pickle.loads(pickle.dumps(fast_model))):
        assert clone._fused_cache is None
        with torch.no_grad():
            torch.testing.assert_close(clone(make_images(1, 64, 64)), fast_model(make_images(1, 64, 64)))


def test_compiled_scores_match_the_standard_path(official_pth, model):
    compiled = QualiCLIP.from_pretrained(official_pth, compiled=True)
    images = make_images(2, 64, 64, seed=7)
    with torch.inference_mode():
        expected = model(images)
        actual = compiled(images)
    assert (actual - expected).abs().max() <= TOLERANCE
    assert type(compiled._fused_cache[1]).__name__ == "OptimizedModule"
