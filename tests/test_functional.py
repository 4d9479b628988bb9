"""qualiclip_score on every input form, reductions and autograd."""

import pytest
import torch
from conftest import make_images
from images import write_odd_images

from qualiclip_metric import ImageLoadError, load_image, qualiclip_score
from qualiclip_metric.batch import score_files


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_odd_images(tmp_path_factory.mktemp("functional"))


def test_tensor_input_matches_the_model(model):
    images = make_images(3, 64, 64, seed=41)
    with torch.no_grad():
        expected = model(images)
    assert torch.equal(qualiclip_score(images, model), expected)
    rescaled = qualiclip_score(images * 255, model, data_range=255.0)
    assert torch.allclose(rescaled, expected, atol=1e-6)  # x * 255 / 255 is not bit-exact
    assert torch.allclose(qualiclip_score(images, model, reduction="mean"), expected.mean())
    assert torch.allclose(qualiclip_score(images, model, reduction="sum"), expected.sum())
    with pytest.raises(ValueError, match="reduction"):
        qualiclip_score(images, model, reduction="max")


def test_files_and_pil_of_mixed_sizes_keep_their_order(model, files):
    names = ["rgb.png", "rotated.jpg", "gray.png", "deep16.png", "rotated.jpg"]
    scores = qualiclip_score([files[n] for n in names], model)
    with torch.no_grad():
        expected = torch.cat([model(load_image(files[n])[None]) for n in names])
    assert scores.shape == (5,)
    assert (scores - expected).abs().max() < 1e-6
    assert torch.allclose(qualiclip_score(files["rgb.png"], model), scores[:1], atol=1e-6)


def test_bad_file_in_a_list_raises(model, files):
    with pytest.raises(ImageLoadError, match="truncated"):
        qualiclip_score([files["rgb.png"], files["truncated.jpg"]], model)


def test_max_size(model):
    images = make_images(1, 256, 128, seed=3)
    small = torch.nn.functional.interpolate(images, size=(64, 32), mode="bilinear", antialias=True)
    with torch.no_grad():
        expected = model(small)
    assert torch.allclose(qualiclip_score(images, model, max_size=64), expected, atol=1e-6)


def test_differentiable_when_input_requires_grad(model):
    images = make_images(2, 64, 64, seed=5).requires_grad_(True)
    qualiclip_score(images, model, reduction="mean").backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


def test_scores_without_grad_are_ordinary_tensors(model):
    scores = qualiclip_score(make_images(2, 64, 64), model)
    assert not scores.is_inference()
    weight = torch.ones(2, requires_grad=True)
    (weight * scores).sum().backward()  # usable in later autograd code
    assert torch.equal(weight.grad, scores)


# -- many files -----------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 2])
def test_score_files_order_errors_and_batching(model, files, workers):
    names = ["rgb.png", "rotated.jpg", "truncated.jpg", "gray.png", "rotated.jpg", "not_an_image.png", "cmyk.jpg"]
    paths = [files[n] for n in names] + [files["rgb.png"].parent / "missing.png"]
    results = list(score_files(paths, model, batch_size=2, workers=workers, buffer_batches=1, per_pair=True))
    assert [r.index for r in results] == list(range(len(paths)))
    assert [r.path for r in results] == [str(p) for p in paths]
    failed = {r.path.rsplit("/", 1)[-1]: r.error for r in results if not r.ok}
    assert set(failed) == {"truncated.jpg", "not_an_image.png", "missing.png"}
    assert "truncated" in failed["truncated.jpg"] and "no such file" in failed["missing.png"]
    for result in results:
        if result.ok:
            with torch.no_grad():
                expected = model(load_image(result.path)[None]).item()
            assert abs(result.score - expected) < 1e-5
            assert len(result.pairs) == 7 and abs(sum(result.pairs.values()) / 7 - result.score) < 1e-6
    rotated = results[1]
    assert (rotated.width, rotated.height) == (48, 64)


def test_score_files_rejects_bad_settings(model):
    with pytest.raises(ValueError, match="batch_size"):
        list(score_files([], model, batch_size=0))
