"""Input validation and decoding: every accepted form works, every bad one names the problem."""

import numpy as np
import pytest
import torch
from conftest import make_images
from images import rgb_array, write_odd_images
from PIL import Image

from qualiclip_metric import ImageLoadError, load_image
from qualiclip_metric.inputs import MIN_IMAGE_SIDE, as_image_batch, collect_image_files, resize_longer_side


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_odd_images(tmp_path_factory.mktemp("odd"))


# -- tensors --------------------------------------------------------------------------------------


def test_accepted_tensor_forms():
    image = make_images(1, 40, 50)
    assert as_image_batch(image[0]).shape == (1, 3, 40, 50)
    as_uint8 = (image * 255).round().to(torch.uint8)
    assert torch.allclose(as_image_batch(as_uint8), as_uint8.float() / 255)
    assert torch.allclose(as_image_batch(image * 255, data_range=255), image, atol=1e-6)
    gray = as_image_batch(image[:, :1])
    assert gray.shape == (1, 3, 40, 50) and torch.equal(gray[:, 0], gray[:, 2])
    assert as_image_batch(image.double()).dtype == torch.float64


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (torch.rand(1, 4, 40, 40), r"got 4 .*shape \(1, 4, 40, 40\).*alpha"),
        (torch.rand(40, 40), r"\(N, 3, H, W\) or \(3, H, W\), got .*shape \(40, 40\)"),
        (torch.rand(1, 1, 3, 40, 40), r"shape \(1, 1, 3, 40, 40\)"),
        (torch.rand(0, 3, 40, 40), "empty batch"),
        (torch.full((1, 3, 40, 40), float("nan")), "NaN or Inf"),
        (torch.full((1, 3, 40, 40), float("inf")), "NaN or Inf"),
        (torch.rand(1, 3, 40, 40) * 2, r"must lie in \[0, 1\], got values in \[.*data_range"),
        (torch.rand(1, 3, 40, 40) - 0.5, r"must lie in \[0, 1\]"),
        (torch.randint(0, 255, (1, 3, 40, 40), dtype=torch.int32), "floating point or uint8.*int32"),
        (torch.rand(1, 3, 30, 64), rf"at least {MIN_IMAGE_SIDE} x {MIN_IMAGE_SIDE}.*got 30 x 64"),
    ],
)
def test_rejected_tensors_name_the_problem(tensor, message):
    with pytest.raises(ValueError, match=message):
        as_image_batch(tensor)


def test_not_a_tensor():
    with pytest.raises(TypeError, match="torch.Tensor"):
        as_image_batch(np.zeros((3, 40, 40)))


def test_smallest_accepted_size_runs_through_the_network(model):
    with torch.no_grad():
        assert torch.isfinite(model(torch.rand(1, 3, MIN_IMAGE_SIDE, MIN_IMAGE_SIDE))).all()


def test_resize_longer_side_is_antialiased_and_differentiable():
    image = make_images(1, 200, 100).requires_grad_(True)
    small = resize_longer_side(image, 64)
    assert small.shape == (1, 3, 64, 32)
    small.sum().backward()
    assert image.grad is not None
    assert resize_longer_side(image, 500) is image
    with pytest.raises(ValueError, match="below the 31-pixel minimum"):
        resize_longer_side(torch.rand(1, 3, 40, 400), 100)


# -- files and PIL images -------------------------------------------------------------------------


def test_rgb_png_is_lossless(files):
    assert torch.equal(load_image(files["rgb.png"]), torch.from_numpy(rgb_array()).permute(2, 0, 1) / 255.0)


def test_path_forms(files):
    assert torch.equal(load_image(str(files["rgb.png"])), load_image(files["rgb.png"]))
    assert torch.equal(load_image(Image.open(files["rgb.png"])), load_image(files["rgb.png"]))


def test_file_contents_decode_as_the_file(files):
    for name in ("rgb.png", "rotated.jpg", "deep16.png"):
        contents = files[name].read_bytes()
        assert torch.equal(load_image(contents), load_image(files[name]))
        assert torch.equal(load_image(memoryview(contents)), load_image(files[name]))
    with pytest.raises(ImageLoadError, match=r"^image bytes: not a recognised image file"):
        load_image(b"not pixels")
    truncated = files["truncated.jpg"].read_bytes()
    with pytest.raises(ImageLoadError, match=r"^s3://bucket/t\.jpg: cannot decode image: truncated"):
        load_image(truncated, name="s3://bucket/t.jpg")
    with pytest.raises(ImageLoadError, match=r"^big: 64 x 48 = 3,072 pixels exceeds the limit of 1,000"):
        load_image(files["rgb.png"].read_bytes(), max_pixels=1000, name="big")


def test_grayscale_is_replicated(files):
    gray = load_image(files["gray.png"])
    assert gray.shape == (3, 48, 64) and torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_alpha_is_discarded(files):
    rgb = load_image(files["rgb.png"])
    assert torch.equal(load_image(files["rgba.png"]), rgb)
    assert torch.equal(load_image(files["gray_alpha.png"]), load_image(Image.open(files["rgb.png"]).convert("L")))


def test_palette_and_cmyk(files):
    palette = load_image(files["palette.png"])
    assert palette.shape == (3, 48, 64) and (palette - load_image(files["rgb.png"])).abs().mean() < 0.05
    cmyk = load_image(files["cmyk.jpg"])
    assert cmyk.shape == (3, 48, 64) and (cmyk - load_image(files["rgb.png"])).abs().mean() < 0.05


def test_sixteen_bit_keeps_its_range(files):
    deep = load_image(files["deep16.png"])
    assert deep.shape == (3, 48, 64)
    assert deep.min() == 0 and deep.max() == 1  # not clipped to 255/65535 nor saturated
    assert len(deep[0].unique()) > 256


def test_exif_orientation_is_applied(files):
    rotated = load_image(files["rotated.jpg"])
    raw = torch.from_numpy(np.asarray(Image.open(files["rotated.jpg"]), dtype=np.float32) / 255).permute(2, 0, 1)
    assert rotated.shape == (3, 64, 48)
    assert torch.equal(rotated, torch.rot90(raw, k=-1, dims=(1, 2)))


def test_broken_files_name_file_and_reason(files, tmp_path):
    with pytest.raises(ImageLoadError, match=r"truncated\.jpg: cannot decode image: truncated"):
        load_image(files["truncated.jpg"])
    with pytest.raises(ImageLoadError, match=r"not_an_image\.png: not a recognised image file"):
        load_image(files["not_an_image.png"])
    with pytest.raises(ImageLoadError, match=r"missing\.jpg: no such file"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageLoadError, match="not a file"):
        load_image(tmp_path)


def test_decompression_bomb_guard(files, tmp_path):
    with pytest.raises(ImageLoadError, match=r"64 x 48 = 3,072 pixels exceeds the limit of 1,000"):
        load_image(files["rgb.png"], max_pixels=1000)
    # A header claiming a huge image is refused before any pixel is decoded.
    bomb = tmp_path / "bomb.png"
    Image.new("1", (30_000, 30_000)).save(bomb)
    with pytest.raises(ImageLoadError, match="900,000,000 pixels exceeds"):
        load_image(bomb)
    assert load_image(files["rgb.png"], max_pixels=None).shape == (3, 48, 64)


def test_tiny_image_file(tmp_path):
    path = tmp_path / "tiny.png"
    Image.new("RGB", (20, 40)).save(path)
    with pytest.raises(ImageLoadError, match="20 x 40 is smaller than the 31 x 31 minimum"):
        load_image(path)


def test_collect_image_files(files, tmp_path):
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    (nested / "deep.png").write_bytes(files["rgb.png"].read_bytes())
    (tmp_path / "top.JPG").write_bytes(files["photo.jpg"].read_bytes())
    (tmp_path / "notes.txt").write_text("skip me")
    assert collect_image_files([tmp_path]) == [tmp_path / "top.JPG"]
    assert collect_image_files([tmp_path], recursive=True) == [nested / "deep.png", tmp_path / "top.JPG"]
    assert collect_image_files([tmp_path / "notes.txt"]) == [tmp_path / "notes.txt"]  # named files are kept


def test_listed_paths_are_literal_not_patterns(files, tmp_path):
    """A list's lines name files: a missing one with ``[`` in its name is a failed row, not a stop, and does
    not score the files its pattern would match."""
    for name in ("001.png", "002.png"):
        (tmp_path / name).write_bytes(files["rgb.png"].read_bytes())
    listing = tmp_path / "list.txt"
    listing.write_text(f"{tmp_path}/00[12].png\n{tmp_path}/gone[1].png\n", encoding="utf-8")
    assert collect_image_files([], files_from=listing) == [tmp_path / "00[12].png", tmp_path / "gone[1].png"]
    assert collect_image_files([f"{tmp_path}/00[12].png"]) == [tmp_path / "001.png", tmp_path / "002.png"]
