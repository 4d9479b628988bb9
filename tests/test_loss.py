"""QualiCLIPLoss for restoration training."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_images

from qualiclip_metric import QualiCLIPLoss

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "restoration_loop.py"


@pytest.fixture(scope="module")
def loss(model):
    return QualiCLIPLoss(model)


def test_value_and_reductions(model, loss):
    images = make_images(3, 64, 64, seed=70)
    with torch.no_grad():
        scores = model(images)
        assert torch.allclose(loss(images), (1 - scores).mean(), atol=1e-6)
        assert torch.allclose(QualiCLIPLoss(model, reduction="none", loss_weight=0.5)(images), 0.5 * (1 - scores))
        assert torch.allclose(QualiCLIPLoss(model, reduction="sum")(images), (1 - scores).sum(), atol=1e-6)
    with pytest.raises(ValueError, match="reduction"):
        QualiCLIPLoss(model, reduction="max")


def test_weights_are_frozen_and_invisible_to_optimizers(loss):
    restorer = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3, padding=1), loss)
    assert list(loss.parameters()) == []
    assert all(p.requires_grad is False for p in loss.network.parameters())
    assert len(restorer.state_dict()) == 2  # only the convolution's weight and bias
    restorer.train()
    assert not loss.network.training


@pytest.mark.parametrize(
    "images",
    [
        make_images(2, 64, 64, seed=71),
        torch.zeros(1, 3, 64, 64),
        torch.ones(1, 3, 64, 64),
        (make_images(1, 64, 64) * 1.2 - 0.1),  # overshoot, as network outputs do
        make_images(1, 512, 384, seed=72),
    ],
    ids=["random", "zeros", "ones", "overshoot", "large"],
)
def test_gradients_reach_the_input_and_are_finite(loss, images):
    images = images.clone().requires_grad_(True)
    loss(images).backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()
    assert images.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.network.parameters())


def test_max_size_bounds_the_resolution(model):
    images = make_images(1, 512, 256, seed=73).requires_grad_(True)
    bounded = QualiCLIPLoss(model, max_size=128)
    value = bounded(images)
    value.backward()
    with torch.no_grad():
        small = torch.nn.functional.interpolate(images, size=(128, 64), mode="bilinear", antialias=True)
        assert torch.allclose(value, 1 - model(small).mean(), atol=1e-6)
    assert images.grad.shape == images.shape


def test_nan_input_is_refused(loss):
    with pytest.raises(ValueError, match="NaN"):
        loss(torch.full((1, 3, 64, 64), float("nan")))


def test_gradient_steps_lower_the_loss(loss):
    degraded = torch.nn.functional.avg_pool2d(make_images(1, 96, 96, seed=74), 5, stride=1, padding=2)
    image = degraded.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([image], lr=0.01)
    values = []
    for _ in range(5):
        optimizer.zero_grad()
        value = loss(image)
        value.backward()
        optimizer.step()
        values.append(value.item())
    with torch.no_grad():
        values.append(loss(image).item())
    assert values[-1] < values[0] - 1e-3, values


def test_restoration_example_trains(official_pth):
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--weights", str(official_pth), "--steps", "3", "--size", "64"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "step 3" in result.stdout and "restorer parameters changed: True" in result.stdout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_under_cuda_autocast(official_pth, dtype):
    loss = QualiCLIPLoss(official_pth).to("cuda")
    images = make_images(2, 128, 128, seed=75).cuda().requires_grad_(True)
    with torch.autocast("cuda", dtype=dtype):
        value = loss(images)
    value.backward()
    assert value.dtype == torch.float32 and torch.isfinite(value)
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    with torch.no_grad():
        assert abs(value.item() - loss(images).item()) < 0.05
