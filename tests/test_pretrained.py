"""The pretrained registry end to end: pinned downloads from a pre-filled hub cache, verification, conversion,
QualiCLIP+ against pyiqa's own arch, cache hygiene and the offline failure."""

import os
import subprocess
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import make_images

from qualiclip_metric import CheckpointError, QualiCLIP, WeightsNotFoundError, list_pretrained
from qualiclip_metric import pretrained as registry
from qualiclip_metric.checkpoint import CONFIG_FILE, MODEL_FILE, TEXT_FILE
from qualiclip_metric.config import QualiCLIPConfig
from qualiclip_metric.weights import converted_dir, pretrained_status

#: fp32 agreement required with pyiqa's QualiCLIP+ (as for QualiCLIP in test_parity).
TOLERANCE = 1e-5
FAMILY = ["qualiclip+-koniq", "qualiclip+-clive", "qualiclip+-flive", "qualiclip+-spaq"]


@pytest.fixture(scope="module")
def images():
    return make_images(3, 96, 128, seed=90)


def scores(model, images):
    with torch.no_grad():
        return model(images)


def test_the_registry_names_and_pins():
    assert list_pretrained() == ["qualiclip", *FAMILY, "qualiclip+"]
    assert registry.get_pretrained("qualiclip+") is registry.get_pretrained("qualiclip+-koniq")
    for name in registry.REGISTRY:
        entry = registry.get_pretrained(name)
        assert entry.weights.repo_id == "chaofengc/IQA-PyTorch-Weights"
        assert all(file.revision == "9c1c305ce9d08878a3e5c92626b444ab6c855e99" for file in entry.files)
        assert all(len(file.sha256) == 64 for file in entry.files) and entry.license == "CC-BY-NC-4.0"
    assert registry.get_pretrained("qualiclip").weights.size == 408_494_502
    assert registry.get_pretrained("qualiclip+-spaq").prompt_learner.sha256.startswith("2d9c2ef6b746")
    with pytest.raises(KeyError, match="known: qualiclip, qualiclip\\+-koniq"):
        registry.get_pretrained("qualiclip++")


def test_the_default_path_downloads_verifies_converts_and_scores(pinned_registry, official_pth, images):
    expected = scores(QualiCLIP.from_pretrained(official_pth), images)
    model = QualiCLIP.from_pretrained(cache_dir=pinned_registry)  # source=None: the registry's "qualiclip"
    assert torch.equal(scores(model, images), expected)
    target = converted_dir(registry.get_pretrained("qualiclip"))
    assert model.source == f"qualiclip ({target})"
    assert sorted(path.name for path in target.iterdir()) == [CONFIG_FILE, MODEL_FILE]  # no text tower copy
    provenance = QualiCLIPConfig.read(target / CONFIG_FILE).provenance
    entry = registry.get_pretrained("qualiclip")
    assert provenance["weights_sha256"] == entry.weights.sha256 and provenance["registry_name"] == "qualiclip"
    assert entry.weights.revision[:12] in provenance["weights"]
    # The converted copy is outside the hub cache, in the assets cache.
    assert Path(os.environ["HF_ASSETS_CACHE"]) in target.parents and pinned_registry not in target.parents


def test_scan_cache_dir_is_clean_after_a_conversion(pinned_registry):
    from huggingface_hub import scan_cache_dir

    QualiCLIP.from_pretrained("qualiclip", cache_dir=pinned_registry)
    QualiCLIP.from_pretrained("qualiclip+-clive", cache_dir=pinned_registry)
    report = scan_cache_dir(pinned_registry)
    assert report.warnings == []
    assert [repo.repo_id for repo in report.repos] == ["chaofengc/IQA-PyTorch-Weights"]


def test_a_file_with_the_wrong_hash_is_refused_before_anything_is_converted(pinned_registry, monkeypatch):
    entry = registry.get_pretrained("qualiclip")
    wrong = "0" * 64
    monkeypatch.setitem(registry.REGISTRY, "qualiclip", replace(entry, weights=replace(entry.weights, sha256=wrong)))
    with pytest.raises(CheckpointError) as info:
        QualiCLIP.from_pretrained("qualiclip", cache_dir=pinned_registry)
    message = str(info.value)
    assert "QualiCLIP.pth" in message and f"expected {wrong}" in message and f"got {entry.weights.sha256}" in message
    assert not converted_dir(registry.get_pretrained("qualiclip")).exists()


def test_a_file_with_the_wrong_size_is_refused_without_hashing(pinned_registry, monkeypatch):
    entry = registry.get_pretrained("qualiclip+-spaq")
    learner = replace(entry.prompt_learner, size=entry.prompt_learner.size + 1)
    monkeypatch.setitem(registry.REGISTRY, "qualiclip+-spaq", replace(entry, prompt_learner=learner))
    with pytest.raises(CheckpointError, match=r"QualiCLIP\+_spaq.pth: size mismatch \(expected \d+ bytes"):
        QualiCLIP.from_pretrained("qualiclip+-spaq", cache_dir=pinned_registry)


def test_verify_false_never_leaves_an_unchecked_copy_for_later_loads(registry_files, pinned_registry, tmp_path):
    """A conversion is trusted by every later load, so its sources are checked even with verify=False."""
    from hubcache import prefill

    path, _, _ = registry_files["QualiCLIP.pth"]
    tampered = tmp_path / "QualiCLIP.pth"
    data = bytearray(path.read_bytes())
    data[-1000] ^= 0x01
    tampered.write_bytes(bytes(data))
    cache = tmp_path / "tampered-hub"
    prefill(cache, registry.PYIQA_REPO, {"QualiCLIP.pth": tampered}, registry.PYIQA_COMMIT)
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        QualiCLIP.from_pretrained("qualiclip", cache_dir=cache, verify=False)
    assert not (converted_dir(registry.get_pretrained("qualiclip")) / CONFIG_FILE).exists()


def test_a_second_load_trusts_the_verification_stamp_until_the_file_changes(pinned_registry, official_pth, images):
    expected = scores(QualiCLIP.from_pretrained(official_pth), images)
    QualiCLIP.from_pretrained(cache_dir=pinned_registry)
    model_file = converted_dir(registry.get_pretrained("qualiclip")) / MODEL_FILE
    assert pretrained_status("qualiclip").verified
    # Flip one byte of a weight and restore size and mtime: only a hash can notice now.
    status = model_file.stat()
    data = bytearray(model_file.read_bytes())
    data[-100] ^= 0x01
    model_file.write_bytes(bytes(data))
    os.utime(model_file, ns=(status.st_atime_ns, status.st_mtime_ns))
    QualiCLIP.from_pretrained(cache_dir=pinned_registry)  # the stamp vouches for the unchanged file: not hashed
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        QualiCLIP.from_pretrained(cache_dir=pinned_registry, verify="always")
    model_file.touch()  # a new mtime voids the stamp: the next load hashes and refuses
    assert not pretrained_status("qualiclip").verified
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        QualiCLIP.from_pretrained(cache_dir=pinned_registry)
    data[-100] ^= 0x01
    model_file.write_bytes(bytes(data))
    assert torch.equal(scores(QualiCLIP.from_pretrained(cache_dir=pinned_registry), images), expected)


def test_a_converted_copy_of_other_sources_is_refused(pinned_registry):
    QualiCLIP.from_pretrained("qualiclip", cache_dir=pinned_registry)
    config_path = converted_dir(registry.get_pretrained("qualiclip")) / CONFIG_FILE
    config = QualiCLIPConfig.read(config_path)
    config.provenance["weights_sha256"] = "f" * 64
    config_path.write_text(config.to_json())
    with pytest.raises(CheckpointError, match="not made from the files the registry pins"):
        QualiCLIP.from_pretrained("qualiclip", cache_dir=pinned_registry)


@pytest.mark.parametrize("name", ["qualiclip+-spaq", "qualiclip+"])
def test_qualiclip_plus_matches_pyiqa(pinned_registry, pyiqa_plus_reference, prompt_learner_files, images, name):
    key = "koniq" if name == "qualiclip+" else name.rsplit("-", 1)[1]
    reference = pyiqa_plus_reference(prompt_learner_files[key], model_type=name)
    model = QualiCLIP.from_pretrained(name, cache_dir=pinned_registry)
    expected = scores(reference, images).squeeze(1)
    actual = scores(model, images)
    assert (actual - expected).abs().max() <= TOLERANCE
    assert model.temperature == 2.0 and model.score_logit_scale == pytest.approx(100.0)
    # The learned prompts are encoded once: the converted copy holds no text tower, and the prompts matter.
    target = converted_dir(registry.get_pretrained(name))
    assert not (target / TEXT_FILE).exists()
    plain = scores(QualiCLIP.from_pretrained("qualiclip", cache_dir=pinned_registry, temperature=2.0), images)
    assert (plain - actual).abs().max() > 1e-2


def test_every_prompt_learner_gets_its_own_copy(pinned_registry, images):
    results = [scores(QualiCLIP.from_pretrained(name, cache_dir=pinned_registry), images) for name in FAMILY]
    assert len({converted_dir(registry.get_pretrained(name)) for name in FAMILY}) == 4
    assert all((a - b).abs().max() > 1e-3 for i, a in enumerate(results) for b in results[i + 1 :])


def test_a_local_prompt_learner_with_any_base(
    official_pth, layout_dir, prompt_learner_files, pyiqa_plus_reference, images
):
    expected = scores(pyiqa_plus_reference(prompt_learner_files["clive"]), images).squeeze(1)
    for base in (official_pth, layout_dir):  # the .pth, and our layout with text.safetensors
        model = QualiCLIP.from_pretrained(base, prompt_learner=prompt_learner_files["clive"])
        assert (scores(model, images) - expected).abs().max() <= TOLERANCE
        assert model.config.provenance["prompt_learner"] == str(prompt_learner_files["clive"])


def test_a_prompt_learner_with_another_context_length(official_pth, clip_parts, pyiqa_plus_reference, images, tmp_path):
    """pyiqa's class takes any n_ctx and splits an odd one unevenly; the conversion reads it from the file."""
    from conftest import PROMPT_TEXTS
    from pyiqa.archs.clip_model import build_model
    from pyiqa.archs.qualiclip_arch import PromptLearner

    torch.manual_seed(5)
    learner = PromptLearner(build_model(dict(clip_parts[0])).float(), PROMPT_TEXTS, n_ctx=7, prompt_specific_ctx=True)
    with torch.no_grad():
        learner.ctx.normal_(0, 0.3)
    path = tmp_path / "seven.pth"
    torch.save({"params": {f"prompt_learner.{k}": v for k, v in learner.state_dict().items()}}, path)
    expected = scores(pyiqa_plus_reference(path, n_ctx=7), images).squeeze(1)
    actual = scores(QualiCLIP.from_pretrained(official_pth, prompt_learner=path), images)
    assert (actual - expected).abs().max() <= TOLERANCE


def test_a_prompt_learner_given_with_a_qualiclip_plus_name_replaces_its_prompts(
    pinned_registry, prompt_learner_files, images
):
    learner = prompt_learner_files["clive"]
    on_plus = QualiCLIP.from_pretrained("qualiclip+-spaq", prompt_learner=learner)
    on_base = QualiCLIP.from_pretrained("qualiclip", prompt_learner=learner)
    assert torch.equal(scores(on_plus, images), scores(on_base, images))
    with pytest.raises(WeightsNotFoundError, match="no such prompt learner file"):
        QualiCLIP.from_pretrained("qualiclip", prompt_learner=pinned_registry / "missing.pth")


def test_prompt_learners_that_do_not_fit_are_refused(official_pth, prompt_learner_files, tmp_path):
    state = torch.load(prompt_learner_files["spaq"], weights_only=True)["params"]
    cases = {
        "other words": {**state, "prompt_learner.token_suffix": state["prompt_learner.token_suffix"] + 0.5},
        "fewer prompts": {k: v[:12] for k, v in state.items()},
        "missing ctx": {k: v for k, v in state.items() if not k.endswith("ctx")},
        "not finite": {**state, "prompt_learner.ctx": state["prompt_learner.ctx"].clone().fill_(float("nan"))},
    }
    messages = {
        "other words": "made for other prompts",
        "fewer prompts": "does not fit 14 prompts",  # the shapes name what the file holds
        "missing ctx": "prompt_learner.ctx is missing",
        "not finite": "NaN or Inf",
    }
    for case, bad in cases.items():
        path = tmp_path / f"{case.replace(' ', '_')}.pth"
        torch.save({"params": bad}, path)
        with pytest.raises(CheckpointError, match=messages[case]):
            QualiCLIP.from_pretrained(official_pth, prompt_learner=path)


def test_options_that_cannot_apply_are_refused(pinned_registry, official_pth, prompt_learner_files):
    with pytest.raises(ValueError, match="replace the learned prompts"):
        QualiCLIP.from_pretrained("qualiclip+-spaq", cache_dir=pinned_registry, prompts=[("a", "b")])
    with pytest.raises(ValueError, match="give one or the other"):
        QualiCLIP.from_pretrained(official_pth, prompt_learner=prompt_learner_files["spaq"], prompts=[("a", "b")])
    with pytest.raises(ValueError, match="pinned by the registry"):
        QualiCLIP.from_pretrained("qualiclip", revision="main")
    with pytest.raises(ValueError, match="Argument `verify`"):
        QualiCLIP.from_pretrained("qualiclip", verify="sometimes")


def test_custom_prompts_use_the_verified_pth(pinned_registry, official_pth, images):
    pairs = [("Crisp photo.", "Smeared photo.")]
    expected = scores(QualiCLIP.from_pretrained(official_pth, prompts=pairs), images)
    model = QualiCLIP.from_pretrained(cache_dir=pinned_registry, prompts=pairs)
    assert torch.equal(scores(model, images), expected)
    assert model.source.endswith("QualiCLIP.pth)")


def test_torchmetrics_and_the_loss_take_registry_names(pinned_registry, images):
    from qualiclip_metric import QualiCLIPLoss, QualiCLIPScore

    expected = scores(QualiCLIP.from_pretrained("qualiclip+-clive", cache_dir=pinned_registry), images)
    metric = QualiCLIPScore(weights="qualiclip+-clive")  # the hub cache comes from the environment here
    metric.update(images)
    assert torch.allclose(metric.compute(), expected.mean(), atol=1e-6)
    loss = QualiCLIPLoss(weights="qualiclip+-clive")
    assert torch.allclose(loss(images), 1 - expected.mean(), atol=1e-6)


def test_nothing_cached_offline_fails_at_once_with_one_line_per_source(tmp_path):
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as info:
        QualiCLIP.from_pretrained("qualiclip+-spaq", cache_dir=tmp_path)
    assert time.perf_counter() - start < 5
    message = str(info.value)
    tried = [line for line in message.splitlines() if line.startswith("  - hf-hub:")]
    assert tried == [
        "  - hf-hub:chaofengc/IQA-PyTorch-Weights@9c1c305ce9d08878a3e5c92626b444ab6c855e99 (QualiCLIP.pth): "
        "not in the cache, and downloads are off (HF_HUB_OFFLINE or local_files_only)"
    ]
    assert "qualiclip download NAME --to DIR" in message


def test_without_network_the_default_fails_fast_and_without_retries(tmp_path):
    """Downloads allowed, but the Hub's host refuses connections (a closed local port stands in for it)."""
    import socket

    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "0",
        "HF_ENDPOINT": f"http://127.0.0.1:{port}",
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "HF_ASSETS_CACHE": str(tmp_path / "assets"),
    }
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy"):
        env.pop(name, None)
    image = tmp_path / "image.png"
    from PIL import Image

    Image.new("RGB", (64, 64), (90, 140, 30)).save(image)
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "qualiclip_metric", "score", str(image)], capture_output=True, text=True, env=env
    )
    elapsed = time.perf_counter() - start
    assert result.returncode == 3, result.stderr
    assert "Retrying" not in result.stderr
    assert f"http://127.0.0.1:{port} cannot be reached (Connection refused)" in result.stderr
    assert elapsed < 20  # the interpreter and torch imports included; the retries alone took 23 s


def test_with_no_warnings_from_a_plain_load(pinned_registry):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        QualiCLIP.from_pretrained("qualiclip+-flive", cache_dir=pinned_registry)
