"""Scores and features against pyiqa's independent QualiCLIP implementation on the same weights."""

import pytest
import torch
import torch.nn.functional as F
from conftest import make_images

#: fp32 agreement required between the two implementations.
TOLERANCE = 1e-5


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("size", [(224, 224), (160, 288), (97, 131)])
def test_scores_match_pyiqa(model, pyiqa_reference, temperature, size):
    reference = pyiqa_reference(temperature)
    images = make_images(4, *size, seed=sum(size))
    model.temperature = temperature
    try:
        with torch.no_grad():
            expected = reference(images).squeeze(1)
            actual = model(images)
    finally:
        model.temperature = 1.0
    assert actual.shape == (4,)
    assert (actual - expected).abs().max() <= TOLERANCE
    assert expected.max() - expected.min() > 0.01  # the checkpoint separates images, so the check has teeth


@pytest.mark.parametrize("size", [(224, 224), (128, 192)])
def test_image_features_match_pyiqa(model, pyiqa_reference, size):
    reference = pyiqa_reference(1.0)
    images = make_images(3, *size, seed=5)
    normalized = (images - reference.default_mean) / reference.default_std
    with torch.no_grad():
        expected = F.normalize(reference.clip_model[0].encode_image(normalized, pos_embedding=False), dim=-1)
        actual = model.image_features(images)
    assert actual.shape == (3, 1024)
    assert (actual - expected).abs().max() <= TOLERANCE
    assert torch.allclose(actual.norm(dim=-1), torch.ones(3), atol=1e-6)


def test_temperature_two_is_not_the_official_score(model, pyiqa_reference):
    images = make_images(4, 96, 96, seed=11)
    with torch.no_grad():
        official = model(images)
        pyiqa_default = pyiqa_reference(2.0)(images).squeeze(1)
    assert (official - pyiqa_default).abs().max() > 1e-3
