"""The batch scorer's pipeline: reader, JPEG decoder, buckets and scores, against per-file scores.

The GPU decoder's code path (which JPEGs it takes, batches, orientation, resizing, falling back to
Pillow) runs here with torchvision's CPU decoder (libjpeg-turbo, the same library Pillow decodes
with); the nvJPEG comparison runs only where CUDA is available.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from images import rgb_array, write_odd_images
from PIL import Image

from qualiclip_metric import ImageLoadError, QualiCLIP, load_image
from qualiclip_metric.batch import (
    PipelineStats,
    _decode_jpegs,
    _pipeline,
    gpu_jpeg_frame,
    orient,
    resolve_decode,
    score_files,
)
from qualiclip_metric.inputs import resize_longer_side

#: Largest score difference between nvJPEG's and Pillow's decode of the smooth test JPEGs (fp32, random weights),
#: and the largest mean pixel difference in levels (0-255). Measured on CLIVE by bench_gpu_pipeline.py.
GPU_DECODE_TOLERANCE = 5e-3
GPU_DECODE_MEAN_LEVELS = 2.0


def jpeg_bytes(array: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", **options)
    return buffer.getvalue()


def write_jpegs(folder: Path, height: int = 40, width: int = 56, smooth: bool = False) -> dict[str, Path]:
    """JPEGs of every kind the GPU decoder must take or leave; names say what each is.

    ``smooth`` makes photo-like content (a smooth field and 1% noise) instead of the test images' strong
    per-pixel noise, whose chroma no two decoders upsample alike.
    """

    def content(h: int, w: int, seed: int) -> np.ndarray:
        if not smooth:
            return rgb_array(h, w, seed=seed)
        g = torch.Generator().manual_seed(seed)
        field = torch.nn.functional.interpolate(torch.rand(1, 3, 5, 7, generator=g), size=(h, w), mode="bicubic")
        image = (field[0] + 0.01 * torch.randn(3, h, w, generator=g)).clamp(0, 1)
        return (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)

    rgb = content(height, width, 1)
    contents = {}
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        contents[f"orient{orientation}.jpg"] = jpeg_bytes(rgb, exif=exif, quality=92)
    for name, subsampling in (("s444.jpg", 0), ("s422.jpg", 1), ("s420.jpg", 2)):
        contents[name] = jpeg_bytes(content(height + 16, width + 16, 2), subsampling=subsampling, quality=85)
    contents["progressive.jpg"] = jpeg_bytes(rgb, progressive=True)
    contents["gray.jpg"] = jpeg_bytes(rgb[..., 1])
    plain = jpeg_bytes(rgb, quality=90)
    contents["trailing.jpg"] = plain + b"a camera's trailer"
    scan = plain.index(b"\xff\xda")
    contents["broken_scan.jpg"] = plain[: scan + 200] + b"\xff\xc0\x00\x05" + plain[scan + 204 :]  # both refuse it
    contents["short_scan.jpg"] = plain[: scan + 50] + b"\xff\xd9"  # both decode it, grey below the cut
    files = {}
    for name, data in contents.items():
        files[name] = folder / name
        files[name].write_bytes(data)
    return files


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("batch")
    return {**write_odd_images(folder), **write_jpegs(folder)}


GPU_JPEGS = [f"orient{o}.jpg" for o in range(1, 9)] + ["s444.jpg", "s422.jpg", "s420.jpg", "photo.jpg", "rotated.jpg"]
GPU_JPEGS += ["broken_scan.jpg", "short_scan.jpg"]  # their headers are fine: the decoders find the fault
PILLOW_ONLY = ["progressive.jpg", "gray.jpg", "cmyk.jpg", "trailing.jpg", "truncated.jpg", "rgb.png"]
PILLOW_ONLY += ["gray.png", "palette.png", "rgba.png", "deep16.png", "not_an_image.png"]


def expected_result(model: QualiCLIP, path: Path, max_size: int | None = None) -> tuple[float | None, str | None]:
    """The per-file reference: ``model(load_image(path))``, or load_image's error."""
    try:
        image = load_image(path)
    except ImageLoadError as err:
        return None, str(err)
    with torch.no_grad():
        return model(resize_longer_side(image[None], max_size)).item(), None


def test_gpu_decoder_takes_only_plain_baseline_jpegs(files):
    for name in GPU_JPEGS:
        with Image.open(files[name]) as image:
            width, height = image.size
        assert gpu_jpeg_frame(files[name].read_bytes()) == (height, width), name
    for name in PILLOW_ONLY:
        assert gpu_jpeg_frame(files[name].read_bytes()) is None, name
    assert gpu_jpeg_frame(b"") is None and gpu_jpeg_frame(b"\xff\xd8\xff\xd9") is None


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_is_pillows(files, orientation):
    path = files[f"orient{orientation}.jpg"]
    decoded = orient(_decode_jpegs([bytearray(path.read_bytes())], torch.device("cpu"))[0], orientation)
    expected = (load_image(path) * 255).round().to(torch.uint8)  # libjpeg-turbo on both sides: equal pixels
    assert decoded.shape == expected.shape and torch.equal(decoded, expected)


def run(paths, model, jpeg: bool, **options) -> tuple[list, PipelineStats]:
    """The pipeline with the GPU decoder's code path on torchvision's CPU decoder, or Pillow alone."""
    stats = PipelineStats()
    settings = {"batch_size": 3, "workers": 0, "max_size": None, "max_pixels": 10**8, "per_pair": False}
    settings |= {"buffer_batches": 2, **options}
    if jpeg:
        results = list(_pipeline(paths, model, jpeg_device=torch.device("cpu"), stats=stats, **settings))
    else:
        results = list(score_files(paths, model, decode="cpu", stats=stats, **settings))
    return results, stats


SCORED = ["orient1.jpg", "orient6.jpg", "orient7.jpg", "s444.jpg", "s422.jpg", "s420.jpg", "photo.jpg"]
SCORED += ["broken_scan.jpg", "short_scan.jpg", "progressive.jpg", "gray.jpg", "cmyk.jpg", "trailing.jpg"]
SCORED += ["truncated.jpg", "rgb.png", "deep16.png", "not_an_image.png", "orient6.jpg", "photo.jpg"]


@pytest.fixture(scope="module")
def references(model, files) -> dict[str, tuple[float | None, str | None]]:
    return {name: expected_result(model, files[name]) for name in dict.fromkeys(SCORED)}


@pytest.mark.parametrize(("jpeg", "workers"), [(False, 0), (True, 0), (True, 2)])
def test_scores_are_the_per_file_scores(model, files, references, jpeg, workers):
    paths = [files[name] for name in SCORED] + [files["rgb.png"].parent / "missing.jpg"]
    results, stats = run(paths, model, jpeg, workers=workers)
    assert [r.index for r in results] == list(range(len(paths)))
    assert [r.path for r in results] == [str(p) for p in paths]
    for path, result in zip(paths[:-1], results, strict=False):
        score, error = references[path.name]
        assert result.error == error, path.name
        if error is None:
            assert abs(result.score - score) < 1e-5, path.name
            image = load_image(path)
            assert (result.width, result.height) == (image.shape[-1], image.shape[-2]), path.name
    assert "no such file" in results[-1].error
    failed = {"broken_scan.jpg", "truncated.jpg", "not_an_image.png", "missing.jpg"}
    assert {Path(r.path).name for r in results if not r.ok} == failed
    decoded_by_torchvision = len([n for n in SCORED if n in GPU_JPEGS and n != "broken_scan.jpg"])
    assert stats.gpu_decoded == (decoded_by_torchvision if jpeg else 0)
    assert stats.gpu_decoded + stats.cpu_decoded == len(paths) - len(failed)
    assert stats.failed == len(failed)


@pytest.mark.parametrize("jpeg", [False, True])
def test_max_size_and_pairs(model, files, jpeg):
    paths = [files[name] for name in ("s420.jpg", "orient8.jpg", "rgb.png")]
    results, _ = run(paths, model, jpeg, max_size=48, per_pair=True)
    for path, result in zip(paths, results, strict=True):
        score, _ = expected_result(model, path, max_size=48)
        assert abs(result.score - score) < 1e-5, path.name
        assert len(result.pairs) == 7 and abs(sum(result.pairs.values()) / 7 - result.score) < 1e-6
    assert (results[1].width, results[1].height) == (40, 56)  # the original size, rotated by its EXIF tag
    too_small, _ = run(paths[:1], model, jpeg, max_size=32)  # 72 x 56 to 32 x 25
    assert not too_small[0].ok and "below the 31-pixel minimum" in too_small[0].error


@pytest.fixture(scope="module")
def sized_files(tmp_path_factory) -> list[Path]:
    """Three sizes, twice each, interleaved: A B C A B C."""
    folder = tmp_path_factory.mktemp("sizes")
    paths = []
    for copy in range(2):
        for index in range(3):
            path = folder / f"size{index}_{copy}.png"
            Image.fromarray(rgb_array(32 + index, 40, seed=index + 3 * copy)).save(path)
            paths.append(path)
    return paths


@pytest.fixture(scope="module")
def sized_scores(model, sized_files) -> list[float]:
    with torch.no_grad():
        return [model(load_image(p)[None]).item() for p in sized_files]


@pytest.mark.parametrize(("buffer_batches", "batches", "most_waiting"), [(1, 6, 2), (5, 3, 3)])
def test_buckets_are_bounded_and_results_keep_input_order(
    model, sized_files, sized_scores, buffer_batches, batches, most_waiting
):
    """With room for 2 waiting images (batch 2, buffer 1) every image is flushed alone, oldest first;
    with room for 10, same sizes wait for each other and make full batches."""
    stats = PipelineStats()
    results, waiting = [], []
    for result in score_files(sized_files, model, batch_size=2, buffer_batches=buffer_batches, stats=stats):
        results.append(result)
        waiting.append(stats.cpu_decoded - len(results))  # decoded images not yet handed back
    assert [r.path for r in results] == [str(p) for p in sized_files]
    assert stats.batches == batches
    assert max(waiting) == most_waiting
    assert max(abs(r.score - e) for r, e in zip(results, sized_scores, strict=True)) < 1e-5


def test_an_odd_size_does_not_hold_back_later_results(model, tmp_path):
    """One 50 x 60 image first, then twelve 40 x 40 (batch 2, room for 8): the first results come while
    inputs are still being read. The last file is written only once the first result is back, so it
    is missing (a failed result) if the odd image waits for the end."""
    paths = [tmp_path / f"{index:02d}.png" for index in range(13)]
    Image.fromarray(rgb_array(50, 60, seed=0)).save(paths[0])
    for index, path in enumerate(paths[1:-1], 1):
        Image.fromarray(rgb_array(40, 40, seed=index)).save(path)
    results = []
    for result in score_files(paths, model, batch_size=2, buffer_batches=4):
        if not results:
            Image.fromarray(rgb_array(40, 40, seed=12)).save(paths[-1])
        results.append(result)
    assert [r.path for r in results] == [str(p) for p in paths]
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    with torch.no_grad():
        expected = [model(load_image(p)[None]).item() for p in paths]
    assert max(abs(r.score - e) for r, e in zip(results, expected, strict=True)) < 1e-5


def test_decode_settings(model):
    assert resolve_decode("auto", model) == "cpu" and resolve_decode("cpu", model) == "cpu"
    with pytest.raises(ValueError, match="Argument `decode` must be one of"):
        list(score_files([], model, decode="gpu"))
    with pytest.raises(ValueError, match="Argument `decode` is 'cuda' but the model is on cpu"):
        list(score_files([], model, decode="cuda"))


# -- nvJPEG --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cuda_model():
    """A random tower on CUDA, built without open_clip (the GPU machine may not have it)."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from random_clip import build_random_tower, official_state

    from qualiclip_metric.checkpoint import Checkpoint, split_state
    from qualiclip_metric.config import QualiCLIPConfig

    state = official_state(*build_random_tower(attention_query_scale=1e-3))
    image_state, _ = split_state(state, "random tower")
    return QualiCLIP.from_checkpoint(Checkpoint(image_state, None, QualiCLIPConfig(), "random tower")).to("cuda")


def test_nvjpeg_decode_is_close_to_pillows(cuda_model, tmp_path):
    files = write_jpegs(tmp_path, height=160, width=224, smooth=True)
    damaged = {"broken_scan.jpg", "short_scan.jpg"}  # decoders may read damage differently: order and rows only
    gpu_jpegs = [name for name in GPU_JPEGS if name in files]
    paths = [files[name] for name in gpu_jpegs + ["progressive.jpg", "gray.jpg", "trailing.jpg"]]
    differences = []
    for name in gpu_jpegs:
        if name not in damaged:
            orientation = int(name[6]) if name.startswith("orient") else 1
            decoded = orient(_decode_jpegs([bytearray(files[name].read_bytes())], torch.device("cuda"))[0], orientation)
            differences.append((decoded.cpu().float() - (load_image(files[name]) * 255).round()).abs().flatten())
    levels = torch.cat(differences)
    print(f"nvJPEG vs Pillow: mean {levels.mean():.3f} levels, largest {levels.max():.0f}")
    assert levels.mean() < GPU_DECODE_MEAN_LEVELS
    by_decoder = {}
    for decode in ("cpu", "cuda"):
        stats = PipelineStats()
        by_decoder[decode] = list(score_files(paths, cuda_model, batch_size=4, workers=2, decode=decode, stats=stats))
        assert [r.path for r in by_decoder[decode]] == [str(p) for p in paths]
        if decode == "cpu":
            assert stats.gpu_decoded == 0
        else:  # the damaged two may be refused and go to Pillow
            assert len(gpu_jpegs) - len(damaged) <= stats.gpu_decoded <= len(gpu_jpegs)
    compared = [(c, g) for c, g in zip(*by_decoder.values(), strict=True) if Path(c.path).name not in damaged]
    assert all(c.ok and g.ok for c, g in compared)
    largest = max(abs(c.score - g.score) for c, g in compared)
    print(f"nvJPEG vs Pillow: largest score difference {largest:.2e} (fp32)")
    assert largest < GPU_DECODE_TOLERANCE
    assert all((c.width, c.height) == (g.width, g.height) for c, g in compared)
    # Pillow's pixels in fp32 on CUDA are the model's scores of each file alone: a race in what both decoders
    # share (the pinned copies, the copy event, the buckets) would pass the comparison above unnoticed.
    with torch.no_grad():
        for result, path in zip(by_decoder["cpu"], paths, strict=True):
            if result.ok:
                expected = cuda_model(load_image(path)[None].cuda()).item()
                assert abs(result.score - expected) < 1e-5, (path.name, result.score, expected)
    cuda_model.precision, cuda_model.fast = "bf16", True
    try:
        stats = PipelineStats()
        fast = list(score_files(paths, cuda_model, batch_size=4, stats=stats))  # auto: nvJPEG for bf16
        assert stats.gpu_decoded >= len(gpu_jpegs) - len(damaged)
        assert all(r.ok for r in fast if Path(r.path).name not in damaged)
    finally:
        cuda_model.precision, cuda_model.fast = "fp32", False
