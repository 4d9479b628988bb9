"""Quality maps: every cell is the model's score of its crop, on every backend, and ``qualiclip map`` writes them.

Expected values come from explicit crops (starts written out by hand) scored one by one with the model's
forward, never from the map code. The weights are the session's random CLIP with the attention pool's query
projection scaled by 1e-3, as in test_runtimes.py (unscaled, fp32 scores of some crops depend on the
summation order, so a batch of windows and a single crop could differ by 1e-4 in any implementation).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_images
from images import rgb_array
from PIL import Image
from test_cli import run as run_cli

from qualiclip_metric import QualiCLIP, load_image
from qualiclip_metric.plotting import render_quality_map
from qualiclip_metric.quality_map import quality_map, upsample_quality_map, window_starts

TOLERANCE = 1e-5
PATCH, STRIDE = 64, 32


@pytest.fixture(scope="module")
def pth(quiet_attention_pth: Path) -> Path:
    return quiet_attention_pth


@pytest.fixture(scope="module")
def model(pth: Path) -> QualiCLIP:
    return QualiCLIP.from_pretrained(pth)


@pytest.fixture(scope="module")
def wide() -> torch.Tensor:
    """40 x 144: shorter than the patch vertically (one row of full-height windows), four columns."""
    return make_images(2, 40, 144, seed=11)


def crop_scores(model: QualiCLIP, image: torch.Tensor, rows, cols, height, width, per_pair=False) -> torch.Tensor:
    """The expected map: each crop scored alone by the model's forward."""
    score = model.pair_probabilities if per_pair else model
    with torch.no_grad():
        cells = [[score(image[None, :, r : r + height, c : c + width])[0] for c in cols] for r in rows]
    return torch.stack([torch.stack(row, dim=-1) for row in cells], dim=-2)


def test_window_starts_follow_the_stride_and_end_at_the_border():
    assert window_starts(500, 224, 112) == [0, 112, 224, 276]
    assert window_starts(448, 224, 112) == [0, 112, 224]
    assert window_starts(225, 224, 112) == [0, 1]
    assert window_starts(224, 224, 112) == [0]
    assert window_starts(100, 224, 112) == [0]  # one window, the whole side
    assert window_starts(144, 64, 32) == [0, 32, 64, 80]
    assert window_starts(130, 64, 64) == [0, 64, 66]


def test_each_cell_is_the_score_of_its_crop(model):
    image = make_images(1, 80, 112, seed=7)  # not square; the last row and column are border-aligned
    with torch.no_grad():
        cells = model.quality_map(image, PATCH, STRIDE, chunk_size=4)  # 6 windows: chunks of 4 and 2
    assert cells.shape == (1, 2, 3) and cells.dtype == torch.float32
    expected = crop_scores(model, image[0], [0, 16], [0, 32, 48], 64, 64)
    assert (cells[0] - expected).abs().max() <= TOLERANCE


def test_sides_shorter_than_the_patch_are_one_window_each(model, wide):
    cells = quality_map(model, wide[0], PATCH, STRIDE)  # (C, H, W) is taken too
    assert cells.shape == (1, 1, 4)
    expected = crop_scores(model, wide[0], [0], [0, 32, 64, 80], 40, 64)
    assert (cells[0] - expected).abs().max() <= TOLERANCE
    small = wide[0, :, :, :50]  # both sides shorter: the whole image
    with torch.no_grad():
        assert (quality_map(model, small, PATCH, STRIDE)[0, 0, 0] - model(small)[0]).abs() <= TOLERANCE


def test_per_pair_maps_hold_the_pair_probabilities(model, wide):
    pairs = quality_map(model, wide[:1], PATCH, STRIDE, per_pair=True)
    assert pairs.shape == (1, len(model.pair_names), 1, 4)
    expected = crop_scores(model, wide[0], [0], [0, 32, 64, 80], 40, 64, per_pair=True)
    assert (pairs[0] - expected).abs().max() <= TOLERANCE
    scores = quality_map(model, wide[:1], PATCH, STRIDE)
    assert (pairs.mean(dim=1) - scores).abs().max() <= 1e-6  # the score is the mean over the pairs


def test_chunks_and_batches_do_not_change_the_map(model, wide):
    one_by_one = quality_map(model, wide, PATCH, STRIDE, chunk_size=1)
    together = quality_map(model, wide, PATCH, STRIDE, chunk_size=64)  # both images' windows in one pass
    assert one_by_one.shape == together.shape == (2, 1, 4)
    assert (one_by_one - together).abs().max() <= TOLERANCE
    assert (quality_map(model, wide[1], PATCH, STRIDE)[0] - together[1]).abs().max() <= TOLERANCE
    scaled = quality_map(model, wide[1] * 255, PATCH, STRIDE, data_range=255.0, chunk_size=1)
    assert (scaled[0] - one_by_one[1]).abs().max() <= 1e-6


def test_no_graph_unless_gradients_are_asked_for(model, wide):
    image = wide[0, :, :, :80]  # two windows
    assert not quality_map(model, image, PATCH, STRIDE).requires_grad
    image = image.clone().requires_grad_()
    cells = quality_map(model, image, PATCH, STRIDE)
    assert cells.requires_grad
    cells.sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0


def test_a_non_torch_backend_maps_like_torch(pth, model, wide):
    onnx = QualiCLIP.from_pretrained(pth, backend="onnxruntime")
    # 40 x 144 at patch 64, stride 32: one row of full-height windows starting at columns 0, 32, 64 and 80,
    # each crop scored alone by the ONNX model's own forward.
    expected = torch.stack([crop_scores(onnx, image, [0], [0, 32, 64, 80], 40, 64) for image in wide])
    cells = onnx.quality_map(wide, PATCH, STRIDE, chunk_size=3)
    assert cells.shape == expected.shape == (2, 1, 4) and (cells - expected).abs().max() <= TOLERANCE
    # Images that require grad are refused, as by the backend's forward.
    with pytest.raises(RuntimeError, match="computes no gradients"):
        onnx.quality_map(wide[0].clone().requires_grad_(), PATCH, STRIDE)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"patch": 0}, "Argument `patch` must be a positive integer, but got 0"),
        ({"patch": 64.0}, "Argument `patch` must be a positive integer, but got 64.0"),
        ({"stride": True}, "Argument `stride` must be a positive integer, but got True"),
        ({"patch": 64, "stride": 65}, r"Argument `stride` must be at most `patch` \(64\)"),
        ({"patch": 30, "stride": 16}, r"Argument `patch` must be at least 31 \(the network's minimum image side\)"),
        ({"chunk_size": 0}, "Argument `chunk_size` must be a positive integer, but got 0"),
    ],
)
def test_bad_arguments_are_refused(model, options, message):
    with pytest.raises(ValueError, match=message):
        model.quality_map(torch.rand(3, 64, 64), **options)


def test_bad_images_are_refused_as_by_the_forward(model):
    with pytest.raises(ValueError, match="at least 31 x 31"):
        model.quality_map(torch.rand(3, 20, 64))
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        model.quality_map(torch.rand(3, 64, 64) * 2)


def test_pixels_take_the_mean_of_the_windows_covering_them():
    cells = torch.rand(3, 4, dtype=torch.float64)
    rows, cols = [0, 32, 48], [0, 32, 64, 80]  # a 112 x 144 image at patch 64, stride 32
    expected = torch.zeros(112, 144, dtype=torch.float64)
    for y in range(112):
        for x in range(144):
            covering = [
                cells[i, j]
                for i, r in enumerate(rows)
                for j, c in enumerate(cols)
                if r <= y < r + 64 and c <= x < c + 64
            ]
            expected[y, x] = sum(covering) / len(covering)
    assert torch.allclose(upsample_quality_map(cells, 112, 144, PATCH, STRIDE), expected, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"Argument `cells` must be a tensor shaped \(\.\.\., 3, 4\)"):
        upsample_quality_map(cells[:2], 112, 144, PATCH, STRIDE)


def test_the_overlay_renders_to_bytes_files_and_buffers(tmp_path, wide):
    pytest.importorskip("matplotlib")
    image, cells = wide[0], torch.tensor([[0.2, 0.4, 0.6, 0.8]])
    png = render_quality_map(image, cells, patch=PATCH, stride=STRIDE, score=0.5, title="wide")
    assert Image.open(io.BytesIO(png)).format == "PNG"
    buffer = io.BytesIO()
    assert render_quality_map(image, cells, buffer, patch=PATCH, stride=STRIDE) is None
    assert buffer.getvalue().startswith(b"\x89PNG")
    render_quality_map(image, cells, tmp_path / "map.svg", patch=PATCH, stride=STRIDE)
    assert (tmp_path / "map.svg").read_text().lstrip().startswith("<?xml")
    with pytest.raises(ValueError, match="Argument `cells` must be a tensor shaped"):
        render_quality_map(image, cells, patch=224, stride=112)  # another grid


def test_the_overlay_colours_each_region_by_the_windows_over_it():
    """On a grey image, columns 0-31 lie in the low window alone and columns 64-143 in high ones only."""
    matplotlib = pytest.importorskip("matplotlib")
    grey, cells = torch.full((3, 40, 144), 0.5), torch.tensor([[0.2, 0.8, 0.8, 0.8]])
    png = render_quality_map(grey, cells, patch=PATCH, stride=STRIDE, limits=(0.0, 1.0))
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64)
    columns = {}
    for value in (0.2, 0.8):  # the viridis colour at half opacity over the grey
        colour = (0.5 * np.asarray(matplotlib.colormaps["viridis"](value)[:3]) + 0.25) * 255
        _, x = np.nonzero(np.abs(pixels - colour).max(axis=-1) <= 3)
        assert x.size > 500, value  # a region of the figure has it
        columns[value] = x
    assert columns[0.2].max() < columns[0.8].min()  # the low window's region lies left of the high windows'
    low_width, high_width = np.ptp(columns[0.2]) + 1, np.ptp(columns[0.8]) + 1
    assert abs(low_width / high_width - 32 / 80) < 0.05  # 32 columns against 80


def test_the_map_command_writes_maps_and_never_replaces_files(pth, model, tmp_path):
    good, bad = tmp_path / "good.png", tmp_path / "bad.jpg"
    Image.fromarray(rgb_array(96, 128, seed=5)).save(good)
    bad.write_text("not pixels")
    output = tmp_path / "maps"
    common = ["--output", output, "--weights", pth, "--patch", PATCH, "--stride", STRIDE]
    result = run_cli(["map", good, bad, *common, "--per-pair", "--chunk-size", "4"])
    assert result.returncode == 1, result.stderr  # one image failed, the other was mapped
    assert "bad.jpg" in result.stderr and "failed" in result.stderr
    names = sorted(path.name for path in output.iterdir())
    assert names == ["good.json", "good.npy", "good.pairs.npy", "good.png"]

    image = load_image(good)
    with torch.no_grad():
        expected = crop_scores(model, image, [0, 32], [0, 32, 64], 64, 64)
        score = model(image[None]).item()
    cells = np.load(output / "good.npy")
    assert cells.shape == (2, 3) and np.abs(cells - expected.numpy()).max() <= TOLERANCE
    assert np.load(output / "good.pairs.npy").shape == (len(model.pair_names), 2, 3)
    summary = json.loads((output / "good.json").read_text())
    assert abs(summary["score"] - score) <= TOLERANCE
    assert (summary["row_starts"], summary["col_starts"], summary["window"]) == ([0, 32], [0, 32, 64], [64, 64])
    assert Image.open(output / "good.png").format == "PNG"

    before = {path.name: path.read_bytes() for path in output.iterdir()}
    again = run_cli(["map", good, *common])
    assert again.returncode == 2 and "already exist; nothing was replaced" in again.stderr
    assert {path.name: path.read_bytes() for path in output.iterdir()} == before

    # Arguments are checked before the weights are read (the weights here do not exist).
    refused = run_cli(["map", good, "--output", tmp_path / "new", "--patch", "64", "--stride", "65", "--weights", "x"])
    assert refused.returncode == 2 and "Argument `stride` must be at most `patch` (64)" in refused.stderr
    for command in (["map", good, "--output", tmp_path / "new"], ["report", good, "--maps", "-o", tmp_path / "r.html"]):
        refused = run_cli([*command, "--patch", "16", "--stride", "8", "--weights", "x"])
        assert refused.returncode == 2 and "Argument `patch` must be at least 31" in refused.stderr, refused.stderr
    assert not (tmp_path / "new").exists() and not (tmp_path / "r.html").exists()


def test_a_file_given_twice_is_mapped_once_and_the_rest_still_are(pth, tmp_path):
    first, second = tmp_path / "first.png", tmp_path / "second.png"
    Image.fromarray(rgb_array(64, 64, seed=1)).save(first)
    Image.fromarray(rgb_array(64, 64, seed=2)).save(second)
    output = tmp_path / "maps"
    (tmp_path / "sub").mkdir()
    again = tmp_path / "sub" / ".." / "first.png"  # the same file by another spelling
    result = run_cli(
        ["map", first, first, again, second, "--output", output, "--weights", pth, "--patch", 64, "--stride", 64]
    )
    assert result.returncode == 0, result.stderr
    assert "mapped 2 of 2 images" in result.stderr
    names = sorted(path.name for path in output.iterdir())
    assert names == ["first.json", "first.npy", "first.png", "second.json", "second.npy", "second.png"]
    assert json.loads((output / "first.json").read_text())["path"] == str(first)  # the first mention kept


class OutOfMemoryOn:
    """A model on a device that runs out of memory mapping one image (as CUDA does), and maps the others."""

    pair_names = ["Good photo./Bad photo."]
    source = "a model that runs out of memory"
    device = torch.device("cpu")

    def __init__(self, width: int) -> None:
        self.width = width

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.full((images.shape[0],), 0.5)

    def quality_map(self, images: torch.Tensor, patch: int, stride: int, **options) -> torch.Tensor:
        if images.shape[-1] == self.width:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return torch.full((images.shape[0], 1, 1), 0.5)


def test_an_image_that_runs_out_of_memory_is_a_failed_image_and_the_others_are_mapped(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    import qualiclip_metric.cli.map as map_command
    from qualiclip_metric.cli import main

    large, small = tmp_path / "large.png", tmp_path / "small.png"
    Image.fromarray(rgb_array(64, 96, seed=1)).save(large)
    Image.fromarray(rgb_array(64, 64, seed=2)).save(small)
    monkeypatch.setattr(map_command, "load_model", lambda args: OutOfMemoryOn(width=96))
    output = tmp_path / "maps"
    code = main(["map", str(large), str(small), "--output", str(output), "--patch", "96", "--stride", "96"])
    stderr = capsys.readouterr().err
    assert code == 1, stderr
    assert f"qualiclip: failed: {large}: CUDA out of memory" in stderr and "mapped 1 of 2 images" in stderr
    assert sorted(path.name for path in output.iterdir()) == ["small.json", "small.npy", "small.png"]
