"""pyiqa.create_metric served by this package, mirroring pyiqa's own general metric tests."""

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_images
from PIL import Image

pyiqa = pytest.importorskip("pyiqa")

from qualiclip_metric.pyiqa_plugin import (  # noqa: E402
    ARCH_NAME,
    PYIQA_BUILTIN_ARCH,
    PYIQA_BUILTIN_NAME,
    QualiCLIPMetricArch,
    qualiclip_arch,
    register,
)

NAMES = ["qualiclip", "qualiclip-official"]


@pytest.fixture(scope="module")
def metrics(official_pth):
    return {name: pyiqa.create_metric(name, pretrained_model_path=str(official_pth), device="cpu") for name in NAMES}


def test_names_are_listed_with_their_metadata(metrics):
    listed = pyiqa.list_models(metric_mode="NR")
    assert set(NAMES) | {PYIQA_BUILTIN_NAME} <= set(listed)
    for metric in metrics.values():
        assert isinstance(metric.net, QualiCLIPMetricArch)
        assert metric.lower_better is False and metric.score_range == "0, 1" and metric.metric_mode == "NR"


@pytest.mark.parametrize(("name", "temperature"), [("qualiclip", 2.0), ("qualiclip-official", 1.0)])
def test_numbers_match_pyiqa_arch(metrics, pyiqa_reference, name, temperature):
    images = make_images(3, 96, 128, seed=80)
    with torch.no_grad():
        expected = pyiqa_reference(temperature)(images)
    actual = metrics[name](images)
    assert actual.shape == (3, 1)
    assert (actual - expected).abs().max() <= 1e-5


def test_fast_option_through_create_metric(official_pth, pyiqa_reference):
    metric = pyiqa.create_metric("qualiclip-official", pretrained_model_path=str(official_pth), fast=True)
    images = make_images(2, 96, 128, seed=81)
    with torch.no_grad():
        expected = pyiqa_reference(1.0)(images)
    assert metric.net.model.fast
    assert (metric(images) - expected).abs().max() <= 5e-5  # test_fused's fp32 tolerance


def test_pyiqa_builtin_stays_reachable(official_pth, clip_parts):
    from unittest import mock

    import pyiqa.archs.qualiclip_arch as arch
    from pyiqa.archs.clip_model import build_model

    with (
        mock.patch.object(arch, "load", lambda name, device: build_model(dict(clip_parts[0])).float()),
        mock.patch.object(arch, "load_file_from_url", lambda url, *a, **k: str(official_pth)),
    ):
        builtin = pyiqa.create_metric(PYIQA_BUILTIN_NAME, device="cpu")
    assert type(builtin.net).__name__ == "QualiCLIP" and type(builtin.net).__module__ == arch.__name__


def test_files_and_pil_images(metrics, tmp_path):
    array = (make_images(1, 64, 80, seed=81)[0].permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    path = tmp_path / "image.png"
    Image.fromarray(array).save(path)
    metric = metrics["qualiclip-official"]
    by_path = metric(str(path))
    by_pil = metric(Image.open(path))
    by_tensor = metric(torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255)
    assert torch.allclose(by_path, by_tensor, atol=1e-6) and torch.allclose(by_pil, by_tensor, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_as_loss_backward(official_pth, name):
    loss_metric = pyiqa.create_metric(name, as_loss=True, pretrained_model_path=str(official_pth), device="cpu")
    images = make_images(2, 64, 64, seed=82).requires_grad_(True)
    value = loss_metric(images)
    value.backward()
    assert value.dim() == 0 and 0 < value.item() < 1  # the score itself: pyiqa does not flip it
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


def test_input_range_check(metrics, official_pth):
    with pytest.raises(AssertionError, match="normalized to"):
        metrics["qualiclip"](torch.rand(1, 3, 64, 64) * 2)
    unchecked = pyiqa.create_metric("qualiclip", check_input_range=False, pretrained_model_path=str(official_pth))
    assert torch.isfinite(unchecked(torch.rand(1, 3, 64, 64) * 1.1)).all()


def test_gray_input(metrics):
    gray = make_images(1, 64, 64, seed=83)[:, :1]
    assert torch.allclose(metrics["qualiclip"](gray), metrics["qualiclip"](gray.expand(-1, 3, -1, -1)))


def test_registration_is_idempotent():
    from pyiqa.default_model_configs import DEFAULT_CONFIGS
    from pyiqa.utils.registry import ARCH_REGISTRY

    before = {name: DEFAULT_CONFIGS[name] for name in [*NAMES, PYIQA_BUILTIN_NAME]}
    register()
    register()
    assert {name: DEFAULT_CONFIGS[name] for name in before} == before
    assert DEFAULT_CONFIGS[PYIQA_BUILTIN_NAME]["metric_opts"]["type"] == PYIQA_BUILTIN_ARCH
    assert ARCH_REGISTRY.get(PYIQA_BUILTIN_ARCH).__module__ == "pyiqa.archs.qualiclip_arch"
    assert ARCH_REGISTRY.get(ARCH_NAME) is QualiCLIPMetricArch
    assert ARCH_REGISTRY.get("QualiCLIP") is qualiclip_arch  # pyiqa's name, as a fresh process looks it up


def test_entry_point_is_declared():
    entry_points = importlib.metadata.entry_points(group="pyiqa.archs")
    assert any(ep.value == "qualiclip_metric.pyiqa_plugin:register" for ep in entry_points)


@pytest.mark.parametrize("order", ["qualiclip_metric, pyiqa", "pyiqa, qualiclip_metric"])
def test_registration_in_either_import_order(official_pth, order):
    code = (
        f"import {order}, torch\n"
        f"m = pyiqa.create_metric('qualiclip', pretrained_model_path={str(official_pth)!r}, device='cpu')\n"
        "print(type(m.net).__name__, float(m(torch.rand(1, 3, 64, 64))) > 0)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=Path(__file__).parent, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [ARCH_NAME, "True"]


FAMILY = ["qualiclip+", "qualiclip+-clive", "qualiclip+-flive", "qualiclip+-spaq"]


@pytest.mark.parametrize("name", ["qualiclip+", "qualiclip+-spaq"])
def test_qualiclip_plus_names_are_served_by_this_package_with_pyiqas_numbers(
    pinned_registry, pyiqa_plus_reference, prompt_learner_files, name
):
    metric = pyiqa.create_metric(name, device="cpu")
    assert isinstance(metric.net, QualiCLIPMetricArch) and metric.lower_better is False
    learner = prompt_learner_files["koniq" if name == "qualiclip+" else "spaq"]
    images = make_images(2, 96, 128, seed=84)
    with torch.no_grad():
        expected = pyiqa_plus_reference(learner, model_type=name)(images)
    assert (metric(images) - expected).abs().max() <= 1e-5


def test_pretrained_model_path_takes_a_prompt_learner_as_pyiqa_does(
    pinned_registry, pyiqa_plus_reference, prompt_learner_files
):
    learner = prompt_learner_files["flive"]
    metric = pyiqa.create_metric("qualiclip+-clive", pretrained_model_path=str(learner), device="cpu")
    images = make_images(2, 96, 128, seed=85)
    with torch.no_grad():
        expected = pyiqa_plus_reference(learner, model_type="qualiclip+-clive")(images)
    assert (metric(images) - expected).abs().max() <= 1e-5
    assert metric.net.model.config.provenance["prompt_learner"] == str(learner)


def test_pyiqas_own_qualiclip_plus_classes_stay_reachable():
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    for name in FAMILY:
        assert DEFAULT_CONFIGS[name]["metric_opts"]["type"] == ARCH_NAME
        assert DEFAULT_CONFIGS[name]["metric_opts"]["weights"] == name
        own = DEFAULT_CONFIGS[f"{name}-pyiqa"]["metric_opts"]
        assert own["type"] == PYIQA_BUILTIN_ARCH and own["model_type"] == name and own["pretrained"] is True
    assert {f"{name}-pyiqa" for name in FAMILY} <= set(pyiqa.list_models(metric_mode="NR"))


def test_pyiqas_arch_name_builds_ours_for_the_family_and_pyiqas_for_untrained_learners(pinned_registry):
    net = qualiclip_arch(model_type="qualiclip+-flive", pretrained=True)
    assert isinstance(net, QualiCLIPMetricArch) and net.model.temperature == 2.0
    local = qualiclip_arch(model_type="qualiclip", weights="qualiclip+-clive")  # an explicit weights= wins
    assert "qualiclip+-clive" in local.model.source
    with pytest.raises(ValueError, match="pretrained=False"):
        QualiCLIPMetricArch(weights="qualiclip+", pretrained=False)
