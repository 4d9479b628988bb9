"""The Hub code path against a pre-filled Hugging Face cache, with the network off."""

import pytest
import torch
from conftest import make_images
from hubcache import prefill

from qualiclip_metric import CheckpointError, QualiCLIP, WeightsNotFoundError
from qualiclip_metric.checkpoint import read_checkpoint, write_layout
from qualiclip_metric.weights import parse_hub_source

REPO = "someone/qualiclip-test"
COMMIT_V1 = "1" * 40
COMMIT_V2 = "2" * 40


@pytest.fixture(scope="module")
def images():
    return make_images(2, 64, 96, seed=31)


@pytest.fixture(scope="module")
def expected(official_pth, images):
    with torch.no_grad():
        return QualiCLIP.from_pretrained(official_pth)(images)


def layout_files(layout_dir, text=True):
    names = ["config.json", "model.safetensors"] + (["text.safetensors"] if text else [])
    return {name: layout_dir / name for name in names}


def score(images, **kwargs):
    with torch.no_grad():
        return QualiCLIP.from_pretrained(local_files_only=True, **kwargs)(images)


def test_parse_hub_source():
    assert parse_hub_source("hf-hub:a/b@v1").revision == "v1"
    assert parse_hub_source("hf-hub:a/b", "main").revision == "main"
    with pytest.raises(ValueError, match="conflicting revisions"):
        parse_hub_source("hf-hub:a/b@v1", "v2")
    with pytest.raises(ValueError, match="ORG/REPO"):
        parse_hub_source("hf-hub:noslash")


def test_hub_source_from_cache(layout_dir, tmp_path, images, expected):
    prefill(tmp_path, REPO, layout_files(layout_dir), COMMIT_V1)
    assert torch.equal(score(images, source=f"hf-hub:{REPO}", cache_dir=tmp_path), expected)


def test_pinned_revisions(layout_dir, tmp_path, images, expected, official_pth):
    prefill(tmp_path, REPO, layout_files(layout_dir), COMMIT_V1, refs=("v1",))
    # v2 holds other weights: a model whose image tower differs in one BatchNorm layer.
    other = read_checkpoint(official_pth)
    other.image_state = dict(other.image_state)
    other.image_state["visual.bn1.bias"] = other.image_state["visual.bn1.bias"] + 0.5
    other_layout = write_layout(other, tmp_path.parent / f"{tmp_path.name}-v2")
    prefill(tmp_path, REPO, layout_files(other_layout), COMMIT_V2, refs=("main",))
    by_tag = score(images, source=f"hf-hub:{REPO}@v1", cache_dir=tmp_path)
    by_commit = score(images, source=f"hf-hub:{REPO}", revision=COMMIT_V1, cache_dir=tmp_path)
    latest = score(images, source=f"hf-hub:{REPO}", cache_dir=tmp_path)
    assert torch.equal(by_tag, expected) and torch.equal(by_commit, expected)
    assert not torch.equal(latest, expected)


def test_tampered_cache_file_is_rejected(layout_dir, tmp_path):
    snapshot = prefill(tmp_path, REPO, layout_files(layout_dir), COMMIT_V1)
    blob = (snapshot / "model.safetensors").resolve()
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 1
    blob.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        QualiCLIP.from_pretrained(f"hf-hub:{REPO}", cache_dir=tmp_path, local_files_only=True)


def test_custom_prompts_fetch_the_text_tower(layout_dir, tmp_path):
    prefill(tmp_path, REPO, layout_files(layout_dir, text=False), COMMIT_V1)
    with pytest.raises(WeightsNotFoundError, match=r"someone/qualiclip-test \(text\.safetensors\)"):
        QualiCLIP.from_pretrained(f"hf-hub:{REPO}", cache_dir=tmp_path, local_files_only=True, prompts=[("a", "b")])
    prefill(tmp_path, REPO, layout_files(layout_dir), COMMIT_V1)
    model = QualiCLIP.from_pretrained(f"hf-hub:{REPO}", cache_dir=tmp_path, local_files_only=True, prompts=[("a", "b")])
    assert model.pair_names == ["a/b"]


def test_an_uncached_hub_source_offline_says_what_was_tried(tmp_path):
    with pytest.raises(WeightsNotFoundError) as info:
        QualiCLIP.from_pretrained(f"hf-hub:{REPO}", cache_dir=tmp_path, local_files_only=True)
    message = str(info.value)
    assert f"hf-hub:{REPO} (config.json): not in the cache, and downloads are off" in message
    assert "qualiclip download" in message and "HF_HUB_CACHE" in message and "local_files_only" in message


def test_missing_local_path_is_clear(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="no such file"):
        QualiCLIP.from_pretrained(tmp_path / "nope.pth")
