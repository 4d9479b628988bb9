"""Local checkpoint formats: equivalence, exact round trips, and refusal of bad files."""

import datetime
import shutil

import pytest
import torch
from conftest import make_images
from safetensors.torch import load_file, save_file

from qualiclip_metric import CheckpointError, QualiCLIP
from qualiclip_metric.checkpoint import read_checkpoint, read_state_dict, write_layout, write_official


@pytest.fixture(scope="module")
def images():
    return make_images(3, 72, 96, seed=21)


def scores(source, images, **kwargs):
    with torch.no_grad():
        return QualiCLIP.from_pretrained(source, **kwargs)(images)


def test_layout_contents(layout_dir):
    config = (layout_dir / "config.json").read_text()
    for needle in (
        '"format": "qualiclip-metric"',
        '"model.safetensors"',
        '"text.safetensors"',
        "Good photo.",
        "0.48145466",
    ):
        assert needle in config
    assert set(load_file(layout_dir / "model.safetensors")) >= {
        "prompts_features",
        "logit_scale",
        "visual.conv1.weight",
    }


def test_all_formats_give_identical_scores(official_pth, layout_dir, images):
    expected = scores(official_pth, images)
    assert torch.equal(scores(layout_dir, images), expected)
    assert torch.equal(scores(layout_dir / "model.safetensors", images), expected)


def test_official_layout_round_trips_exactly(official_pth, layout_dir, tmp_path):
    back = write_official(read_checkpoint(layout_dir, need_text=True), tmp_path / "back.pth")
    original = torch.load(official_pth, weights_only=True)
    restored = torch.load(back, weights_only=True)
    assert original.keys() == restored.keys()
    for key in original:
        assert original[key].dtype == restored[key].dtype and torch.equal(original[key], restored[key]), key


def test_bare_safetensors_carries_its_config(layout_dir, tmp_path, images):
    custom = QualiCLIP.from_pretrained(layout_dir, prompts=[("Clean.", "Noisy."), ("Sharp.", "Blurry.")])
    checkpoint = read_checkpoint(layout_dir)
    checkpoint.image_state = {**checkpoint.image_state, "prompts_features": custom.prompts_features}
    checkpoint.config.prompt_pairs = custom.prompt_pairs
    bare = write_layout(checkpoint, tmp_path / "custom", include_text=False) / "model.safetensors"
    reloaded = QualiCLIP.from_pretrained(bare)
    assert reloaded.prompt_pairs == custom.prompt_pairs
    with torch.no_grad():
        assert torch.equal(reloaded(images), custom(images))


def copy_layout(layout_dir, tmp_path):
    return shutil.copytree(layout_dir, tmp_path / "copy")


def test_tampered_file_is_rejected(layout_dir, tmp_path):
    copy = copy_layout(layout_dir, tmp_path)
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-100] ^= 0xFF
    (copy / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: sha256 mismatch"):
        QualiCLIP.from_pretrained(copy)


def test_truncated_files_are_rejected(layout_dir, official_pth, tmp_path):
    copy = copy_layout(layout_dir, tmp_path)
    data = (copy / "model.safetensors").read_bytes()
    (copy / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        QualiCLIP.from_pretrained(copy)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors file"):
        QualiCLIP.from_pretrained(copy, verify=False)
    truncated_pth = tmp_path / "truncated.pth"
    truncated_pth.write_bytes(official_pth.read_bytes()[:1_000_000])
    with pytest.raises(CheckpointError, match=r"truncated\.pth: not a readable PyTorch checkpoint"):
        QualiCLIP.from_pretrained(truncated_pth)


def edited_safetensors(layout_dir, tmp_path, edit):
    tensors = load_file(layout_dir / "model.safetensors")
    edit(tensors)
    path = tmp_path / "edited.safetensors"
    save_file(tensors, path)
    return path


def test_wrong_shape_is_named(layout_dir, tmp_path):
    def edit(t):
        t["visual.attnpool.c_proj.weight"] = t["visual.attnpool.c_proj.weight"][:512]

    with pytest.raises(
        CheckpointError, match=r"wrong shapes \(visual\.attnpool\.c_proj\.weight: file has \(512, 2048\)"
    ):
        QualiCLIP.from_pretrained(edited_safetensors(layout_dir, tmp_path, edit))


def test_missing_and_unexpected_keys_are_named(layout_dir, tmp_path):
    def drop(t):
        del t["visual.layer1.0.conv1.weight"]

    with pytest.raises(CheckpointError, match=r"1 missing keys \(visual\.layer1\.0\.conv1\.weight\)"):
        QualiCLIP.from_pretrained(edited_safetensors(layout_dir, tmp_path, drop))

    def add(t):
        t["visual.extra.weight"] = torch.zeros(2)

    with pytest.raises(CheckpointError, match=r"unexpected keys \(visual\.extra\.weight\)"):
        QualiCLIP.from_pretrained(edited_safetensors(layout_dir, tmp_path, add))

    def foreign(t):
        t["classifier.weight"] = torch.zeros(2)

    with pytest.raises(CheckpointError, match="belong to no CLIP RN50 part"):
        QualiCLIP.from_pretrained(edited_safetensors(layout_dir, tmp_path, foreign))


def test_pickled_objects_are_never_loaded(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"prompts_features": torch.zeros(14, 1024), "when": datetime.date(2024, 1, 1)}, path)
    with pytest.raises(CheckpointError, match="never unpickled"):
        QualiCLIP.from_pretrained(path)


def test_prompt_learner_file_is_explained(tmp_path):
    path = tmp_path / "QualiCLIP+_koniq.pth"
    torch.save({"params": {"prompt_learner.ctx": torch.zeros(14, 16, 512)}}, path)
    with pytest.raises(CheckpointError, match="prompt-learner files hold no image tower"):
        QualiCLIP.from_pretrained(path)


def test_ddp_prefixed_state_dict_loads(official_pth, tmp_path, images):
    state = torch.load(official_pth, weights_only=True)
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    assert torch.equal(scores(path, images), scores(official_pth, images))


def test_one_state_dict_reader_unwraps_every_usual_container(tmp_path):
    weight, bias = torch.arange(6.0).reshape(2, 3), torch.ones(2)
    plain = {"layer.weight": weight, "layer.bias": bias}
    containers = {
        "plain.pth": plain,
        "lightning.ckpt": {"state_dict": plain, "epoch": 200, "hyper_parameters": {"lr": 0.1}},
        "ddp.pth": {"model": {f"module.{k}": v for k, v in plain.items()}, "optimizer": {"state": {}}},
        "pyiqa.pth": {"params": plain},
        "nested.pth": {"state_dict": {"model": plain}},
    }
    for name, content in containers.items():
        torch.save(content, tmp_path / name)
        state = read_state_dict(tmp_path / name)
        assert list(state) == ["layer.weight", "layer.bias"], name
        assert torch.equal(state["layer.weight"], weight) and torch.equal(state["layer.bias"], bias), name
    save_file({"module.layer.weight": weight}, str(tmp_path / "ddp.safetensors"))
    assert torch.equal(read_state_dict(tmp_path / "ddp.safetensors")["layer.weight"], weight)


def test_the_state_dict_reader_refuses_what_is_not_tensors(tmp_path):
    with pytest.raises(CheckpointError, match=r"absent\.pth: no such weights file"):
        read_state_dict(tmp_path / "absent.pth")
    torch.save({"layer.weight": torch.ones(1), "steps": 7}, tmp_path / "mixed.pth")
    with pytest.raises(CheckpointError, match="entry 'steps' is a int, not a tensor"):
        read_state_dict(tmp_path / "mixed.pth")
    assert list(read_state_dict(tmp_path / "mixed.pth", ignore={"steps"})) == ["layer.weight"]
    torch.save({"module.w": torch.ones(1), "w": torch.zeros(1)}, tmp_path / "twice.pth")
    with pytest.raises(CheckpointError, match="'w' appears with and without the prefix module."):
        read_state_dict(tmp_path / "twice.pth")
    (tmp_path / "cut.safetensors").write_bytes(b"\x10\x00\x00")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        read_state_dict(tmp_path / "cut.safetensors")


def test_baselines_raise_the_library_checkpoint_error():
    from training.reiqa import model as reiqa_model

    assert reiqa_model.CheckpointError is CheckpointError


def test_fp16_weights_are_accepted(official_pth, tmp_path, images):
    state = torch.load(official_pth, weights_only=True)
    path = tmp_path / "half.pth"
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, path)
    assert (scores(path, images) - scores(official_pth, images)).abs().max() < 0.01


def test_write_layout_never_overwrites_silently(official_pth, tmp_path):
    target = tmp_path / "release"
    checkpoint = read_checkpoint(official_pth)
    write_layout(checkpoint, target, include_text=False)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_layout(checkpoint, target)
    write_layout(checkpoint, target, overwrite=True)
    assert (target / "text.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["release"]  # no staging directories left behind
