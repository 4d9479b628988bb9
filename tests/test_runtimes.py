"""The OpenVINO and onnxruntime backends, the conversion cache, ``--fast``'s choice and exported files.

The weights are the session's random CLIP with the attention pool's query projection scaled by 1e-3.
Unscaled, its attention logits reach 1e4 (a trained CLIP's stay in the tens), so the pool is nearly
one-hot and fp32 scores of some images depend on summation order by 1e-4, in torch itself against
float64 too: no fp32 implementation could be held to 1e-5 on them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from qualiclip_metric import QualiCLIP, QualiCLIPScore, fastest_configuration
from qualiclip_metric.runtimes import ExportedScorer, backend_precisions, load_runtime
from tests.conftest import make_images

BACKENDS = ["openvino", "onnxruntime"]
SIZES = [(96, 128), (160, 224)]
EXPORT_SIZES = [(96, 128), (160, 224), (64, 64)]
FP32_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def pth(quiet_attention_pth: Path) -> Path:
    return quiet_attention_pth


@pytest.fixture(scope="module")
def reference(pth: Path) -> QualiCLIP:
    return QualiCLIP.from_pretrained(pth)


@pytest.fixture(scope="module")
def backends(pth: Path) -> dict[str, QualiCLIP]:
    return {backend: QualiCLIP.from_pretrained(pth, backend=backend) for backend in BACKENDS}


def images(size: tuple[int, int], n: int = 3) -> torch.Tensor:
    return make_images(n, *size, seed=size[0] + size[1])


def cache_files() -> dict[str, int]:
    root = Path(os.environ["HF_ASSETS_CACHE"]) / "qualiclip-metric" / "runtimes"
    return {str(path): path.stat().st_mtime_ns for path in root.rglob("*") if path.is_file()}


@pytest.mark.parametrize("size", SIZES, ids=lambda size: f"{size[0]}x{size[1]}")
@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_matches_torch_fp32(backends, reference, backend, size):
    x = images(size)
    model = backends[backend]
    with torch.inference_mode():
        assert (model(x) - reference(x)).abs().max() <= FP32_TOLERANCE
        assert (model.pair_probabilities(x) - reference.pair_probabilities(x)).abs().max() <= FP32_TOLERANCE
        assert (model.image_features(x) - reference.image_features(x)).abs().max() <= FP32_TOLERANCE
        assert model(x[:1]).shape == (1,)  # the batch size is dynamic too


def test_scoring_entry_points_take_the_backend(backends, reference, pth):
    """``qualiclip_score`` (through the metric) and the metric run the backend, in input order."""
    x = images((96, 128), n=4)
    metric = QualiCLIPScore(weights=str(pth), backend="openvino", reduction="none")
    metric.update(x[:2])
    metric.update(x[2:])
    with torch.inference_mode():
        expected = reference(x)
    assert metric.network.backend == "openvino"
    assert (metric.compute() - expected).abs().max() <= FP32_TOLERANCE


@pytest.mark.skipif("bf16" not in backend_precisions("openvino"), reason="OpenVINO has no bf16 on this CPU")
def test_openvino_bf16_runs_in_bf16(pth, reference):
    model = QualiCLIP.from_pretrained(pth, backend="openvino", precision="bf16")
    x = images((96, 128))
    with torch.inference_mode():
        difference = (model(x) - reference(x)).abs().max()
    # bf16 differs from fp32 (so the precision was applied) by what bf16 rounding gives, no more.
    assert 1e-5 < difference < 5e-3
    assert load_runtime(model, "openvino", "bf16").precision == "bf16"
    assert load_runtime(model, "openvino", "fp32").precision == "fp32"  # the same conversion, compiled for fp32


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_on_a_non_torch_backend_are_refused(backends, backend):
    x = images((64, 64), n=1).requires_grad_()
    with pytest.raises(RuntimeError, match="computes no gradients; use backend='torch'"):
        backends[backend](x)


def test_options_that_cannot_apply_are_refused_before_loading(tmp_path):
    missing = tmp_path / "nothing.pth"  # never read: every refusal comes first
    with pytest.raises(ValueError, match="Argument `backend` must be one of"):
        QualiCLIP.from_pretrained(missing, backend="tensorrt")
    with pytest.raises(ValueError, match="onnxruntime's CPU kernels run fp32 only"):
        QualiCLIP.from_pretrained(missing, backend="onnxruntime", precision="bf16")
    with pytest.raises(ValueError, match="runs on the CPU, not on cuda"):
        QualiCLIP.from_pretrained(missing, backend="openvino", device="cuda")
    with pytest.raises(ValueError, match="apply to the torch backend only"):
        QualiCLIP(backend="openvino", fast=True)
    with pytest.raises(ValueError, match="Argument `threads` must be a positive integer or None, but got 0"):
        ExportedScorer(tmp_path / "no-export", threads=0)  # 0 is an error, not "as many as torch uses"


def test_a_missing_runtime_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if it were not installed
    with pytest.raises(ValueError, match=r'needs openvino: pip install "qualiclip-metric\[openvino\]"'):
        QualiCLIP.from_pretrained(tmp_path / "nothing.pth", backend="openvino")
    choice = fastest_configuration("cpu")
    assert (choice.backend, choice.fast) == ("torch", True)
    assert "qualiclip-metric[openvino]" in choice.reason


def has_amx() -> bool:
    flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    return {"amx_tile", "amx_bf16"} <= set(flags.split(":", 1)[1].split())


@pytest.mark.parametrize("amx", [True, False])
def test_fast_chooses_by_the_cpu(monkeypatch, amx):
    monkeypatch.setattr("qualiclip_metric.runtimes.has_amx_bf16", lambda: amx)
    choice = fastest_configuration("cpu")
    bf16 = amx and "bf16" in backend_precisions("openvino")
    assert (choice.backend, choice.precision, choice.fast) == ("openvino", "bf16" if bf16 else "fp32", False)
    assert ("AMX bf16 tiles" in choice.reason) == bf16
    kept = fastest_configuration("cpu", backend="torch")
    assert (kept.backend, kept.fast, kept.precision) == ("torch", True, "bf16" if amx else "fp32")
    with pytest.raises(ValueError, match="fp32 only"):
        fastest_configuration("cpu", backend="onnxruntime", precision="bf16")


def test_threads_follow_torch(pth, reference):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runtime = load_runtime(reference, "openvino", "fp32")
    finally:
        torch.set_num_threads(before)
    assert runtime.threads == 1
    assert load_runtime(reference, "onnxruntime", "fp32", threads=2).threads == 2


SECOND_PROCESS = """
import json, logging, sys
records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append(record.getMessage())
logging.getLogger("qualiclip_metric").addHandler(Keep())
logging.getLogger("qualiclip_metric").setLevel(logging.INFO)
import numpy, torch
from qualiclip_metric import QualiCLIP
model = QualiCLIP.from_pretrained(sys.argv[1], backend=sys.argv[2])
images = torch.from_numpy(numpy.load(sys.argv[3]))
print(json.dumps({"scores": model(images).tolist(), "log": records}))
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_second_process_reuses_the_conversion(backends, pth, backend, tmp_path):
    x = images((96, 128))
    with torch.inference_mode():
        expected = backends[backend](x)  # converted and cached by now
    before = cache_files()
    np.save(tmp_path / "images.npy", x.numpy())
    result = subprocess.run(
        [sys.executable, "-c", SECOND_PROCESS, str(pth), backend, str(tmp_path / "images.npy")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    assert not [message for message in output["log"] if "converting" in message]
    assert cache_files() == before  # nothing written or rewritten
    assert torch.allclose(torch.tensor(output["scores"]), expected, rtol=0, atol=1e-7)


# -- exported files --------------------------------------------------------------------------

RUN_EXPORT = """
import json, sys
import numpy
folder, images = sys.argv[1], numpy.load(sys.argv[2])
description = json.load(open(folder + "/qualiclip.json"))
if description["format"] == "onnx":
    import onnxruntime
    session = onnxruntime.InferenceSession(folder + "/model.onnx", providers=["CPUExecutionProvider"])
    outputs = session.run(None, {description["inputs"][0]["name"]: images})
else:
    import openvino
    config = {"INFERENCE_PRECISION_HINT": description["openvino_inference_precision_hint"]}
    compiled = openvino.Core().compile_model(folder + "/model.xml", "CPU", config)
    outputs = compiled(images).to_tuple()
loaded = sorted(name for name in sys.modules if name.split(".")[0] in ("qualiclip_metric", "torch"))
print(json.dumps({"outputs": [output.tolist() for output in outputs], "loaded": loaded}))
"""


def qualiclip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "qualiclip_metric", *args], capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def exports(pth: Path, module_tmp_path: Path) -> dict[str, Path]:
    folders = {}
    for format in ("onnx", "openvino"):
        folders[format] = module_tmp_path / f"export-{format}"
        result = qualiclip(
            "export", "--format", format, "--weights", str(pth), "--output", str(folders[format]), "--per-pair"
        )
        assert result.returncode == 0, result.stderr
        assert str(folders[format]) in result.stdout
    return folders


@pytest.mark.parametrize("format", ["onnx", "openvino"])
def test_exported_files_run_without_the_package(exports, reference, format, tmp_path):
    folder = exports[format]
    description = json.loads((folder / "qualiclip.json").read_text())
    assert [output["name"] for output in description["outputs"]] == ["scores", "probabilities"]
    assert description["prompt_pairs"] == [list(pair) for pair in reference.prompt_pairs]
    assert (description["temperature"], description["logit_scale"]) == (1.0, 100.0)
    assert description["precision"] == "fp32"
    for size in EXPORT_SIZES:
        x = images(size)
        np.save(tmp_path / "images.npy", x.numpy())
        result = subprocess.run(
            [sys.executable, "-c", RUN_EXPORT, str(folder), str(tmp_path / "images.npy")],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
        output = json.loads(result.stdout)
        assert output["loaded"] == []
        scores, probabilities = (torch.tensor(values) for values in output["outputs"])
        with torch.inference_mode():
            assert (scores - reference(x)).abs().max() <= FP32_TOLERANCE, size
            assert (probabilities - reference.pair_probabilities(x)).abs().max() <= FP32_TOLERANCE, size


def test_export_refuses_what_it_cannot_do_and_replaces_nothing(pth, tmp_path):
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    result = qualiclip("export", "--format", "onnx", "--weights", str(pth), "--output", str(existing))
    assert result.returncode == 2
    assert "exists" in result.stderr and "Traceback" not in result.stderr
    assert [path.name for path in existing.iterdir()] == ["keep.txt"]
    result = qualiclip("export", "--format", "onnx", "--precision", "bf16", "--output", str(tmp_path / "new"))
    assert result.returncode == 2
    assert "OpenVINO format for bf16" in result.stderr
    assert not (tmp_path / "new").exists()


def test_cli_scores_with_a_backend_and_info_says_what_fast_picks(backends, reference, pth, tmp_path):
    from PIL import Image

    x = images((96, 128), n=2)
    for index, image in enumerate(x):
        Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(tmp_path / f"{index}.png")
    result = qualiclip(
        "score", str(tmp_path), "--weights", str(pth), "--backend", "openvino", "--threads", "1", "--workers", "0"
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()[1:]
    scores = torch.tensor([float(line.split(",")[1]) for line in lines])
    from qualiclip_metric import load_image

    decoded = torch.stack([load_image(tmp_path / f"{index}.png") for index in range(2)])
    with torch.inference_mode():
        assert (scores - reference(decoded)).abs().max() <= FP32_TOLERANCE

    info = qualiclip("info")
    assert info.returncode == 0, info.stderr
    fast = next(line for line in info.stdout.splitlines() if line.startswith("--fast on cpu"))
    precision = "bf16" if has_amx() and "bf16" in backend_precisions("openvino") else "fp32"
    assert f"backend openvino, precision {precision}" in fast
    assert "openvino 20" in info.stdout and "onnxruntime 1." in info.stdout
