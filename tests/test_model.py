"""Behaviour of the QualiCLIP module itself: outputs, precision, gradients, prompts."""

import pytest
import torch
from conftest import make_images

from qualiclip_metric import DEFAULT_PROMPT_PAIRS, QualiCLIP, QualiCLIPConfig
from qualiclip_metric.checkpoint import read_checkpoint, write_layout


def test_outputs_and_pair_names(model):
    images = make_images(2, 64, 80)
    with torch.no_grad():
        scores = model(images)
        pairs = model.pair_probabilities(images)
    assert scores.shape == (2,) and pairs.shape == (2, 7)
    assert torch.allclose(pairs.mean(dim=1), scores)
    assert ((scores > 0) & (scores < 1)).all()
    assert model.pair_names[0] == "Good photo./Bad photo." and len(model.pair_names) == 7
    assert len(set(model.pair_names)) == 7


def test_single_image_without_batch_dimension(model):
    image = make_images(1, 64, 64, seed=3)
    with torch.no_grad():
        assert torch.equal(model(image[0]), model(image))


def test_frozen_and_in_eval_mode(model):
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


def test_gradients_reach_the_input(model):
    images = make_images(2, 64, 64, seed=4).requires_grad_(True)
    model(images).sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


def test_grad_checkpointing_recomputes_the_stages_and_keeps_the_gradients(model):
    images = make_images(2, 64, 64, seed=5)
    calls = []
    # The stage's first block: recomputation stops early, once the tensors the backward pass needs exist.
    hook = model.visual.layer2[0].register_forward_hook(lambda *args: calls.append(1))
    gradients = []
    try:
        for enable in (False, True):
            model.set_grad_checkpointing(enable)
            x = images.clone().requires_grad_(True)
            model(x).sum().backward()
            gradients.append(x.grad)
    finally:
        model.set_grad_checkpointing(False)
        hook.remove()
    assert len(calls) == 1 + 2  # once without; forward and recomputation in the backward pass with
    assert torch.equal(gradients[0], gradients[1])


#: Random weights amplify rounding far more than trained ones; these bounds catch broken casts, not
#: drift (benchmarks measure the drift on real images). bf16 keeps 8 mantissa bits, fp16 keeps 11.
REDUCED_PRECISION_TOLERANCE = {"tf32": 1e-6, "bf16": 0.05, "fp16": 0.005}


@pytest.mark.parametrize("precision", ["bf16", "fp16", "tf32"])
def test_reduced_precision_close_to_fp32(model, precision):
    images = make_images(4, 96, 96, seed=9)
    with torch.no_grad():
        reference = model(images)
        model.precision = precision
        try:
            reduced = model(images)
        finally:
            model.precision = "fp32"
    assert reduced.dtype == torch.float32
    assert (reduced - reference).abs().max() < REDUCED_PRECISION_TOLERANCE[precision]
    if precision != "tf32":  # TF32 only exists on CUDA: on the CPU it is plain fp32
        assert not torch.equal(reduced, reference)  # autocast really ran


def test_invalid_settings_are_rejected(model):
    with pytest.raises(ValueError, match="Argument `precision` must be one of"):
        model.precision = "int8"
    with pytest.raises(ValueError, match="temperature"):
        model.temperature = 0


def test_the_config_is_what_the_model_scores_with(model):
    checkpoint = read_checkpoint_from_model(model)
    copy = QualiCLIP.from_checkpoint(checkpoint)
    images = make_images(2, 64, 64, seed=13)
    copy.temperature = 3
    copy.set_score_logit_scale(50.0)
    assert (copy.config.temperature, copy.config.score_logit_scale) == (3.0, 50.0)
    assert (checkpoint.config.temperature, checkpoint.config.score_logit_scale) == (1.0, 100.0)  # not shared
    with pytest.raises(AttributeError):
        copy.score_logit_scale = 1.0  # changed through set_score_logit_scale only, which keeps the config in step
    with pytest.raises(ValueError, match="Argument `score_logit_scale` must be a positive finite number"):
        copy.set_score_logit_scale(0.0)
    # The config travels with the tensors: a model rebuilt from them scores the same.
    rebuilt = QualiCLIP.from_checkpoint(read_checkpoint_from_model(copy))
    with torch.no_grad():
        assert torch.equal(rebuilt(images), copy(images))
        assert not torch.allclose(copy(images), model(images))
    assert QualiCLIP(config=copy.config).temperature == 3.0


def test_set_prompts_updates_the_config(model, clip_parts):
    copy = QualiCLIP.from_checkpoint(read_checkpoint_from_model(model))
    pairs = [("Clean.", "Noisy."), ("Sharp.", "Blurry.")]
    copy.set_prompts(pairs, clip_parts[1][:4])
    assert copy.config.prompt_pairs == tuple(pairs) == copy.prompt_pairs
    rebuilt = QualiCLIP.from_checkpoint(read_checkpoint_from_model(copy))
    assert rebuilt.pair_names == ["Clean./Noisy.", "Sharp./Blurry."]
    images = make_images(2, 64, 64, seed=14)
    with torch.no_grad():
        assert torch.equal(rebuilt.pair_probabilities(images), copy.pair_probabilities(images))


@pytest.mark.parametrize("temperature", [0, 0.0, -1.0, float("inf"), float("nan")])
def test_a_temperature_that_is_not_positive_and_finite_is_refused(model, temperature):
    message = "Argument `temperature` must be a positive finite number"
    with pytest.raises(ValueError, match=message):
        QualiCLIPConfig(temperature=temperature)
    with pytest.raises(ValueError, match=message):
        QualiCLIP.from_checkpoint(read_checkpoint_from_model(model), temperature=temperature)
    with pytest.raises(ValueError, match=message):
        QualiCLIP(temperature=temperature)


def test_empty_options_are_refused_rather_than_replaced_by_defaults():
    with pytest.raises(ValueError, match="at least one"):
        QualiCLIP(prompt_pairs=[])
    assert QualiCLIP(config=QualiCLIPConfig(temperature=2.0)).temperature == 2.0


def test_default_prompts_through_the_text_tower_match_stored_features(official_pth, clip_parts, model):
    custom = QualiCLIP.from_pretrained(official_pth, prompts=DEFAULT_PROMPT_PAIRS)
    assert torch.allclose(custom.prompts_features, clip_parts[1], atol=1e-6)
    images = make_images(2, 64, 64, seed=8)
    with torch.no_grad():
        assert torch.allclose(custom(images), model(images), atol=1e-6)


def test_custom_prompt_pairs(official_pth):
    pairs = [("A clean photo.", "A noisy photo."), ("A sharp photo.", "A blurry photo.")]
    custom = QualiCLIP.from_pretrained(official_pth, prompts=pairs)
    assert custom.pair_names == ["A clean photo./A noisy photo.", "A sharp photo./A blurry photo."]
    with torch.no_grad():
        assert custom.pair_probabilities(make_images(3, 64, 64)).shape == (3, 2)
    with pytest.raises(ValueError, match="two non-empty strings"):
        QualiCLIP.from_pretrained(official_pth, prompts=[("only one",)])


def test_default_path_needs_no_text_tower(official_pth, tmp_path, model):
    checkpoint = read_checkpoint(official_pth)
    layout = write_layout(checkpoint, tmp_path / "image-only", include_text=False)
    assert not (layout / "text.safetensors").exists()
    image_only = QualiCLIP.from_pretrained(layout)
    images = make_images(2, 64, 64, seed=2)
    with torch.no_grad():
        assert torch.equal(image_only(images), model(images))
    with pytest.raises(ValueError, match="text"):
        QualiCLIP.from_pretrained(layout, prompts=[("good", "bad")])


def test_large_image_scores_are_finite(model):
    # 1024 x 1024 gives 1024 tokens to the attention pool; memory is measured in benchmarks, not here.
    images = make_images(1, 1024, 1024, seed=6)
    with torch.no_grad():
        assert torch.isfinite(model(images)).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16", "fp16"])
def test_cuda_matches_cpu(model, precision):
    images = make_images(4, 160, 224, seed=12)
    caller_setting = torch.backends.cudnn.allow_tf32
    with torch.no_grad():
        expected = model(images)
        gpu = QualiCLIP.from_checkpoint(read_checkpoint_from_model(model), precision=precision).to("cuda")
        actual = gpu(images.cuda()).cpu()
    tolerance = {**REDUCED_PRECISION_TOLERANCE, "fp32": 1e-5, "tf32": 5e-3}[precision]
    assert (actual - expected).abs().max() < tolerance
    assert torch.backends.cudnn.allow_tf32 == caller_setting  # restored after the forward


@pytest.mark.skipif(not hasattr(torch.backends.cudnn, "conv"), reason="torch without per-backend fp32_precision")
def test_tf32_switch_restores_the_callers_settings():
    from qualiclip_metric.precision import cuda_tf32

    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    before = (conv.fp32_precision, matmul.fp32_precision)
    for enabled, inside in ((True, "tf32"), (False, "ieee")):
        with cuda_tf32(enabled):
            assert (conv.fp32_precision, matmul.fp32_precision) == (inside, inside)
        assert (conv.fp32_precision, matmul.fp32_precision) == before
    with pytest.raises(RuntimeError), cuda_tf32(False):
        raise RuntimeError("restored also when the block raises")
    assert (conv.fp32_precision, matmul.fp32_precision) == before


def read_checkpoint_from_model(model):
    from qualiclip_metric.checkpoint import Checkpoint

    return Checkpoint(dict(model.state_dict()), None, model.config, origin="in-memory")


def test_loading_and_scoring_import_no_heavy_packages(official_pth):
    """Cold start: neither open_clip (its model zoo) nor sympy (via meta-tensor helpers) is imported to score."""
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from qualiclip_metric import QualiCLIP\n"
        f"model = QualiCLIP.from_pretrained({str(official_pth)!r})\n"
        "model(torch.rand(1, 3, 64, 64))\n"
        "heavy = {'open_clip', 'sympy', 'pyiqa', 'matplotlib', 'openvino', 'onnxruntime', 'onnx', 'onnxscript'}\n"
        "print(sorted({name.split('.')[0] for name in sys.modules} & heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
