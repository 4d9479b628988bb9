"""The synthetic degradation bank: contract of every distortion, strength ordering of the levels, composition.

Everything runs on the CPU except the cross-device check, which needs CUDA. The real photograph is a
128 x 128 crop of Kodak image 23 (parrots; Kodak released the suite for unrestricted use) stored next to
this file. The "ARNIQA cells" section checks every cell whose computation follows ARNIQA's port against a
NumPy computation of that definition written here (the random draws replayed from the documented order).
"""

from __future__ import annotations

import dataclasses
import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from arniqa_reference import RANDOM, ref_filter, ref_lab2rgb, ref_motion, ref_rgb2lab
from PIL import Image
from scipy import ndimage
from torchmetrics.functional.image import structural_similarity_index_measure

from training.degradations import DISTORTIONS, GROUPS, VARIANTS, degrade, random_composition

KODAK_CROP = Path(__file__).parent / "data" / "kodim_crop.png"
NAMES = list(DISTORTIONS)
EXPECTED_LEVELS = {
    "gaublur": (0.1, 0.5, 1, 2, 5),
    "lensblur": (1, 2, 4, 6, 8),
    "motionblur": (1, 2, 4, 6, 10),
    "colordiff": (1, 3, 6, 8, 12),
    "colorshift": (1, 3, 6, 8, 12),
    "colorsat1": (0.4, 0.2, 0.1, 0, -0.4),
    "colorsat2": (1, 2, 3, 6, 9),
    "jpeg2000": (16, 32, 45, 120, 170),
    "jpeg": (43, 36, 24, 7, 4),
    "whitenoise": (0.001, 0.002, 0.003, 0.005, 0.01),
    "whitenoiseCC": (0.0001, 0.0005, 0.001, 0.002, 0.003),
    "impulsenoise": (0.001, 0.005, 0.01, 0.02, 0.03),
    "multnoise": (0.001, 0.005, 0.01, 0.02, 0.05),
    "brighten": (0.1, 0.2, 0.4, 0.7, 1.1),
    "darken": (0.05, 0.1, 0.2, 0.4, 0.8),
    "meanshift": (0, 0.08, -0.08, 0.15, -0.15),
    "jitter": (0.05, 0.1, 0.2, 0.5, 1),
    "noneccpatch": (20, 40, 60, 80, 100),
    "pixelate": (0.01, 0.05, 0.1, 0.2, 0.5),
    "quantization": (20, 16, 13, 10, 7),
    "colorblock": (2, 4, 6, 8, 10),
    "highsharpen": (1, 2, 3, 6, 12),
    "lincontrchange": (0, 0.15, -0.4, 0.3, -0.6),
    "nonlincontrchange": (0.4, 0.3, 0.2, 0.1, 0.05),
}


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def kodak() -> torch.Tensor:
    """The Kodak crop as a (1, 3, 128, 128) float32 batch in [0, 1]."""
    pixels = np.array(Image.open(KODAK_CROP).convert("RGB"))
    return torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255.0


@pytest.fixture(scope="module")
def pair(kodak: torch.Tensor) -> torch.Tensor:
    """Two different images, non-square, so per-image randomness and H != W are exercised."""
    return torch.cat((kodak[..., :, :112], kodak.flip(-1).transpose(-1, -2)[..., :, 16:]))


def grey(value: float, size: int = 64) -> torch.Tensor:
    return torch.full((1, 3, size, size), value)


# ------------------------------------------------------------------------------------------------- registry


def test_registry_matches_the_kadid_table() -> None:
    assert NAMES == list(EXPECTED_LEVELS)
    for name, distortion in DISTORTIONS.items():
        assert distortion.name == name
        assert distortion.levels == pytest.approx(EXPECTED_LEVELS[name])
        assert name in GROUPS[distortion.group]
    assert {name for name, d in DISTORTIONS.items() if d.cpu_only} == {"jpeg", "jpeg2000"}
    assert list(GROUPS) == [
        "blur",
        "color_distortion",
        "jpeg",
        "noise",
        "brightness_change",
        "spatial_distortion",
        "sharpness_contrast",
    ]
    assert sum(len(names) for names in GROUPS.values()) == 24
    with pytest.raises(dataclasses.FrozenInstanceError):
        DISTORTIONS["jpeg"].cpu_only = False  # type: ignore[misc]


# ------------------------------------------------------------------------------------------------- contract


@pytest.mark.parametrize("name", NAMES)
def test_contract(name: str, pair: torch.Tensor) -> None:
    before = pair.clone()
    for level in range(1, 6):
        out = degrade(pair, name, level, seeded(level))
        assert out.shape == pair.shape and out.dtype == pair.dtype and out.device == pair.device
        assert out.min() >= 0 and out.max() <= 1 and torch.isfinite(out).all()
        assert out.data_ptr() != pair.data_ptr()
        assert torch.equal(pair, before), "the input was modified"
        assert torch.equal(out, degrade(pair, name, level, seeded(level))), "same seed, different output"
    if name in RANDOM:
        assert not torch.equal(degrade(pair, name, 5, seeded(1)), degrade(pair, name, 5, seeded(2)))


@pytest.mark.parametrize("name", NAMES)
def test_float64_and_bfloat16(name: str, kodak: torch.Tensor) -> None:
    """float64 is computed in float64 and agrees with float32; bfloat16 is computed in float32 and cast back."""
    single = degrade(kodak, name, 3, seeded())
    double = degrade(kodak.double(), name, 3, seeded())
    assert double.dtype == torch.float64 and double.min() >= 0 and double.max() <= 1
    # Rounding can flip a pixel across a threshold (JPEG's 8-bit input, quantization, pixel copies): compare means.
    assert (double.float() - single).abs().mean() < 2e-3
    half = degrade(kodak.bfloat16(), name, 3, seeded())
    assert half.dtype == torch.bfloat16
    assert (half.float() - degrade(kodak.bfloat16().float(), name, 3, seeded())).abs().max() <= 2**-8


def test_global_generator_when_none(kodak: torch.Tensor) -> None:
    torch.manual_seed(7)
    first = degrade(kodak, "whitenoise", 3)
    torch.manual_seed(7)
    assert torch.equal(first, degrade(kodak, "whitenoise", 3))


def test_memory_layouts(kodak: torch.Tensor) -> None:
    """Expanded (stride-0) and channels-last batches give what their contiguous copies give."""
    expanded = kodak[..., :48, :48].expand(3, -1, -1, -1)
    channels_last = torch.rand(2, 3, 40, 40, generator=seeded()).contiguous(memory_format=torch.channels_last)
    for name in NAMES:
        for images in (expanded, channels_last):
            out = degrade(images, name, 5, seeded())
            assert torch.allclose(out, degrade(images.contiguous(), name, 5, seeded()), atol=1e-6), name


@pytest.mark.parametrize("size", [(1, 1), (5, 3), (20, 33)])
def test_small_images(size: tuple[int, int]) -> None:
    images = torch.rand(2, 3, *size, generator=seeded())
    for name in NAMES:
        out = degrade(images, name, 5, seeded())
        assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1, name


# ----------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize("level", [0, 6, -1, 2.0, True, "3", None])
def test_level_validation(level: object, kodak: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="level"):
        degrade(kodak, "gaublur", level)  # type: ignore[arg-type]


def test_argument_validation(kodak: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="valid names: gaublur, lensblur"):
        degrade(kodak, "gaussian_blur", 1)
    for bad_shape in (kodak[0], kodak[:, :1], torch.cat((kodak, kodak[:, :1]), 1), kodak[:0]):
        with pytest.raises(ValueError, match="shape"):
            degrade(bad_shape, "jpeg", 1)
    for bad_value in (1.5, -0.01, math.nan):
        images = kodak.clone()
        images[0, 0, 0, 0] = bad_value
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            degrade(images, "jpeg", 1)
    with pytest.raises(ValueError, match="floating-point"):
        degrade((kodak * 255).to(torch.uint8), "jpeg", 1)
    with pytest.raises(ValueError, match="Tensor"):
        degrade(kodak.numpy(), "jpeg", 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="generator"):
        degrade(kodak, "jpeg", 1, generator=0)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------- strength


def strength(name: str, degraded: torch.Tensor, pristine: torch.Tensor) -> float:
    """1 - SSIM for blurs (MSE undersells the loss of detail), MSE for everything else."""
    if DISTORTIONS[name].group == "blur":
        return 1.0 - structural_similarity_index_measure(degraded, pristine, data_range=1.0).item()
    return torch.mean((degraded - pristine) ** 2).item()


def severity(name: str, parameter: float) -> float:
    """How far the parameter is from leaving the image alone, in the parameter's own units."""
    if name in ("jpeg", "quantization", "nonlincontrchange"):
        return -parameter  # a lower quality, fewer levels, a narrower output range are stronger
    if name == "colorsat1":
        # The saturation factor moves away from 1 (unchanged). 0 removes the colour; -0.4 goes further than
        # grey, to the complementary hue at 40 % saturation, so it is stronger than 0, not equal to it.
        return 1.0 - parameter
    if name == "lincontrchange":
        # The KADID curve runs through (0.3, 0.25 - p / 4) and (0.7, 0.75 + p / 4), not (0.25, .) and
        # (0.75, .): p = 0 is already a slight contrast boost and the knots sit |p + 0.2| / 4 off the
        # identity. So p = 0 and p = -0.4 are equally strong (boost vs. cut of the same size) and the
        # table's level 5 (-0.6) is milder than its level 4 (0.3); |p| is not the strength here.
        return abs(parameter + 0.2)
    return abs(parameter)  # meanshift: +-0.08 and +-0.15 are ties in magnitude


@pytest.mark.parametrize("name", [n for n in NAMES if n != "colorshift"])
def test_strength_grows_with_the_parameter(name: str, kodak: torch.Tensor) -> None:
    # Random distortions: 3 seeds per level, the same seeds at every level (noise patterns, angles and
    # positions are then shared across levels and only the parameter changes).
    seeds = range(3) if name in RANDOM else range(1)
    levels = DISTORTIONS[name].levels
    measured = {
        level: float(np.mean([strength(name, degrade(kodak, name, level, seeded(s)), kodak) for s in seeds]))
        for level in range(1, 6)
    }
    by_severity: dict[float, list[float]] = {}
    for level, value in measured.items():
        by_severity.setdefault(round(severity(name, levels[level - 1]), 9), []).append(value)
    ordered = [by_severity[key] for key in sorted(by_severity)]
    for weaker, stronger in zip(ordered[:-1], ordered[1:], strict=True):
        assert min(stronger) >= max(weaker) * 0.99 - 1e-6, f"{name}: {measured}"
    assert max(measured.values()) > 1e-3, f"{name} barely changes the image: {measured}"


def test_identity_levels(kodak: torch.Tensor) -> None:
    """Level 1 of these leaves the image (almost) unchanged: sigma 0.1, a 1-pixel line, factor 1, shift 0."""
    for name in ("gaublur", "motionblur", "meanshift"):
        assert (degrade(kodak, name, 1, seeded()) - kodak).abs().max() < 1e-4, name
    assert (degrade(kodak, "colorsat2", 1, variant="kadid") - kodak).abs().max() < 1e-4
    # ARNIQA truncates to 8 bits after the CIELAB round trip: values stay or drop one level.
    assert (kodak - degrade(kodak.double(), "colorsat2", 1).float()).abs().max() <= 1 / 255 + 1e-6


def green_displacement(degraded: torch.Tensor, pristine: torch.Tensor, reach: int = 13) -> tuple[int, int]:
    """The shift (dx, dy) of the pristine green channel that best explains the change of the green channel."""
    green = pristine[0, 1]
    h, w = green.shape
    change = (degraded[0, 1] - green)[reach:-reach, reach:-reach]
    best, found = -math.inf, (0, 0)
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            moved = green[reach - dy : h - reach - dy, reach - dx : w - reach - dx] - green[reach:-reach, reach:-reach]
            score = ((moved * change).sum() / (moved.norm() * change.norm() + 1e-12)).item()
            if score > best:
                best, found = score, (dx, dy)
    return found


def test_colorshift_strength(kodak: torch.Tensor) -> None:
    # The error against the pristine image is w^2 E[(G(x - d) - G(x))^2], w the edge weight: the texture's
    # structure function, which flattens once |d| passes the correlation length of the texture (about
    # 6 pixels on this crop), so the MSE grows over 1, 3, 6 pixels and then plateaus.
    batch = kodak.expand(8, -1, -1, -1)  # 8 random directions
    measured = [strength("colorshift", degrade(batch, "colorshift", level, seeded()), batch) for level in range(1, 6)]
    # ARNIQA's shift also wraps the first |dy - dx| rows or columns round from the far side, which adds a
    # roughly constant error from 3 pixels on: so only level 1 is clearly milder.
    assert measured[0] < 0.6 * min(measured[1:]) and min(measured[2:]) >= 0.9 * measured[1], measured
    # What does grow with the parameter is the displacement itself: the green channel moves p pixels
    # (each component rounded to whole pixels, hence the tolerance of sqrt(2) / 2).
    for seed in range(2):
        for level, shift in enumerate(DISTORTIONS["colorshift"].levels, start=1):
            dx, dy = green_displacement(degrade(kodak, "colorshift", level, seeded(seed)), kodak)
            assert abs(math.hypot(dx, dy) - shift) <= 0.75, (seed, level, dx, dy)


# ---------------------------------------------------------------------------------------- parameter meaning


def impulse(size: int = 41) -> torch.Tensor:
    images = torch.zeros(1, 3, size, size)
    images[..., size // 2, size // 2] = 1.0
    return images


def test_gaussian_blur_sigma_and_support() -> None:
    for level, sigma in enumerate(DISTORTIONS["gaublur"].levels[2:], start=3):
        response = degrade(impulse(), "gaublur", level)[0, 0].double()
        c, reach = 20, math.ceil(2 * sigma)
        assert response.sum() == pytest.approx(1.0, abs=1e-5)
        assert response[c, c + 1] / response[c, c] == pytest.approx(math.exp(-1 / (2 * sigma**2)), rel=1e-4)
        nonzero = response.nonzero()
        assert (nonzero - c).abs().max() == reach  # support 2 * ceil(2 sigma) + 1


def test_lens_blur_is_a_disk_of_the_radius() -> None:
    for level, radius in enumerate(DISTORTIONS["lensblur"].levels, start=1):
        response = degrade(impulse(), "lensblur", level, variant="kadid")[0, 0]
        offsets = torch.arange(41) - 20
        distance = torch.hypot(offsets[:, None].float(), offsets[None, :].float())
        assert (response[distance > radius + 0.75] == 0).all()
        inner = response[distance < radius - 0.75]
        assert inner.max() - inner.min() < 1e-6  # flat inside
        assert inner.mean() == pytest.approx(1 / (math.pi * radius**2), rel=0.02)


def test_motion_blur_is_a_line_of_the_length() -> None:
    for level, length in enumerate(DISTORTIONS["motionblur"].levels, start=1):
        response = degrade(impulse(), "motionblur", level, seeded(level))[0, 0]
        assert response.sum() == pytest.approx(1.0, abs=1e-5)
        ys, xs = response.nonzero(as_tuple=True)
        extent = torch.hypot((ys - 20).float(), (xs - 20).float()).max().item()
        assert (length - 1) / 2 - 0.5 <= extent <= (length - 1) / 2 + 1.5


def test_noise_parameters_are_variances_and_densities() -> None:
    images = grey(0.5, 256)
    for level, variance in enumerate(DISTORTIONS["whitenoise"].levels, start=1):
        noise = degrade(images, "whitenoise", level, seeded()) - images
        assert noise.var().item() == pytest.approx(variance, rel=0.05)
    for level, variance in enumerate(DISTORTIONS["whitenoiseCC"].levels, start=1):
        out = degrade(images, "whitenoiseCC", level, seeded())
        luma = torch.einsum("c,nchw->nhw", torch.tensor([0.299, 0.587, 0.114]), out - images)
        assert luma.var().item() == pytest.approx(variance, rel=0.05)
    for level, variance in enumerate(DISTORTIONS["multnoise"].levels, start=1):
        ratio = degrade(images, "multnoise", level, seeded()) / images - 1
        assert ratio.var().item() == pytest.approx(variance, rel=0.05)
    for level, density in enumerate(DISTORTIONS["impulsenoise"].levels, start=1):
        out = degrade(images, "impulsenoise", level, seeded())
        salt, pepper = (out == 1).float().mean().item(), (out == 0).float().mean().item()
        assert salt + pepper == pytest.approx(density, rel=0.1)
        assert salt == pytest.approx(pepper, rel=0.3)


def test_tone_parameters() -> None:
    ramp = torch.linspace(0, 1, 256).expand(1, 3, 4, 256).contiguous()
    shifted = degrade(grey(0.5), "meanshift", 4)
    assert torch.allclose(shifted, torch.full_like(shifted, 0.65))
    squeezed = degrade(ramp, "nonlincontrchange", 5)  # [0, 1] onto [0.45, 0.55]
    assert squeezed.min().item() == pytest.approx(0.45) and squeezed.max().item() == pytest.approx(0.55)
    darker, brighter = degrade(ramp, "darken", 3), degrade(ramp, "brighten", 3)
    assert (darker <= ramp + 1e-6).all() and (brighter >= ramp - 1e-6).all()
    boosted, cut = degrade(ramp, "lincontrchange", 4), degrade(ramp, "lincontrchange", 5)  # p = 0.3, -0.6
    assert boosted[..., 64].mean() < ramp[..., 64].mean() < cut[..., 64].mean()


def test_colour_parameters(kodak: torch.Tensor) -> None:
    grey_out = degrade(kodak, "colorsat1", 4)  # saturation factor 0
    assert (grey_out.amax(1) - grey_out.amin(1)).max() < 1e-6
    complementary = degrade(kodak, "colorsat1", 5)  # factor -0.4: the largest channel becomes the smallest
    reddish = (kodak[:, 0] > kodak[:, 1] + 0.2) & (kodak[:, 0] > kodak[:, 2] + 0.2)
    if reddish.any():
        assert (complementary[:, 0][reddish] <= complementary[:, 1][reddish] + 1e-6).all()
    shifted = degrade(kodak, "colorshift", 5, seeded())
    assert torch.equal(shifted[:, 0], kodak[:, 0]) and torch.equal(shifted[:, 2], kodak[:, 2])
    assert not torch.equal(shifted[:, 1], kodak[:, 1])


def test_spatial_parameters(kodak: torch.Tensor) -> None:
    ramp = torch.linspace(0, 1, 256).expand(1, 3, 4, 256).contiguous()
    for level, levels in enumerate(DISTORTIONS["quantization"].levels, start=1):
        assert degrade(ramp, "quantization", level).unique().numel() == levels + 1  # exact black has its own
    colours = {tuple(p) for p in kodak[0].flatten(1).T.tolist()}
    for name in ("noneccpatch", "pixelate"):  # pixels are moved or repeated, never invented
        out = degrade(kodak, name, 5, seeded())
        assert {tuple(p) for p in out[0].flatten(1).T.tolist()} <= colours, name
    blocks = degrade(grey(0.5, 128), "colorblock", 1, seeded())  # 2 blocks of 32 x 32
    changed = (blocks != 0.5).any(1).float().sum().item()
    assert 32 * 32 <= changed <= 2 * 32 * 32


# ---------------------------------------------------------------------------------------------- composition


def test_random_composition(pair: torch.Tensor) -> None:
    seen_counts, seen_levels = set(), set()
    for seed in range(40):
        out, applied = random_composition(pair, max_distortions=4, generator=seeded(seed))
        assert 1 <= len(applied) <= 4
        groups = [DISTORTIONS[name].group for name, _ in applied]
        assert len(set(groups)) == len(groups)
        assert all(1 <= level <= 5 and isinstance(level, int) for _, level in applied)
        assert out.shape == pair.shape and out.dtype == pair.dtype and out.min() >= 0 and out.max() <= 1
        seen_counts.add(len(applied))
        seen_levels.update(level for _, level in applied)
    assert seen_counts == {1, 2, 3, 4} and seen_levels == {1, 2, 3, 4, 5}

    first = random_composition(pair, generator=seeded(3))
    again = random_composition(pair, generator=seeded(3))
    assert first[1] == again[1] and torch.equal(first[0], again[0])
    assert random_composition(pair, generator=seeded(4))[1] != first[1]
    for seed in range(5):  # all seven groups may be used at once
        _, applied = random_composition(pair, max_distortions=7, generator=seeded(seed))
        assert len({DISTORTIONS[name].group for name, _ in applied}) == len(applied) <= 7


def test_random_composition_levels_favour_mild(kodak: torch.Tensor) -> None:
    tiny = kodak[..., :24, :24]
    counts = np.zeros(5)
    generator = seeded(11)
    for _ in range(150):
        for _, level in random_composition(tiny, max_distortions=1, generator=generator)[1]:
            counts[level - 1] += 1
    assert counts[0] > counts[4] and counts[:2].sum() > counts[3:].sum()


@pytest.mark.parametrize("kwargs", [{"max_distortions": 0}, {"max_distortions": 8}, {"level_std": 0.0}])
def test_random_composition_validation(kwargs: dict[str, float], kodak: torch.Tensor) -> None:
    with pytest.raises(ValueError):
        random_composition(kodak, **kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- ARNIQA cells
# NumPy computations of ARNIQA's definitions (miccunifi/ARNIQA utils/distortions.py, kornia's colour
# conversions), written independently of training/degradations.py; the kernels and colour conversions the
# benchmark also uses are in arniqa_reference.py.


def np_gaussian(sigma: float, radius: int | None = None) -> np.ndarray:
    """fspecial('gaussian', 2 r + 1, sigma), r = ceil(2 sigma) unless given."""
    r = math.ceil(2 * sigma) if radius is None else radius
    kernel = np.array(
        [[math.exp(-(i * i + j * j) / (2 * sigma**2)) for j in range(-r, r + 1)] for i in range(-r, r + 1)]
    )
    return kernel / kernel.sum()


def np_port_disk(radius: int) -> np.ndarray:
    """The ARNIQA port of fspecial('disk'), one pixel at a time."""
    r2, size = radius * radius, 2 * radius + 1
    weights = np.zeros((size, size))
    for row in range(size):
        for col in range(size):
            far = max(abs(row - radius), abs(col - radius))
            near = min(abs(row - radius), abs(col - radius))
            if r2 < (far + 0.5) ** 2 + (near - 0.5) ** 2:
                lower = near - 0.5
            else:
                lower = 0.0  # the port's branch (MATLAB: sqrt(r^2 - (far + 0.5)^2))
            if r2 > (far - 0.5) ** 2 + (near + 0.5) ** 2:
                upper = near + 0.5
            else:
                upper = math.sqrt(r2 - (near - 0.5) ** 2)  # the port's branch (MATLAB: far instead of near)
            edge = (far - 0.5) ** 2 + (near - 0.5) ** 2 < r2 < (far + 0.5) ** 2 + (near + 0.5) ** 2
            edge = edge or (near == 0 and far - 0.5 < radius <= far + 0.5)
            if edge:
                t2, t1 = math.asin(upper / radius), math.asin(lower / radius)
                segment = r2 * (0.5 * (t2 - t1) + 0.25 * (math.sin(2 * t2) - math.sin(2 * t1)))
                weights[row, col] = segment - (far - 0.5) * (upper - lower) + (lower - near + 0.5)
            if (far + 0.5) ** 2 + (near + 0.5) ** 2 < r2:
                weights[row, col] += 1.0
    weights[radius, radius] = 1.0
    return weights / weights.sum()


def np_parabola(v: np.ndarray, middle: float) -> np.ndarray:
    """curves(v, middle): the spline through (0, 0), (0.5, middle), (1, 1), i.e. (2 - 4 m) v^2 + (4 m - 1) v."""
    return np.clip((2 - 4 * middle) * v**2 + (4 * middle - 1) * v, 0, 1)


def small_image(h: int = 14, w: int = 17, seed: int = 0) -> torch.Tensor:
    """Generic float64 colours (no value on an 8-bit level, so truncation is never a tie)."""
    return torch.rand(1, 3, h, w, generator=seeded(seed), dtype=torch.float64) * 0.98 + 0.01


def as_numpy(images: torch.Tensor) -> np.ndarray:
    return images[0].double().numpy()


@pytest.mark.parametrize("variant", VARIANTS)
def test_lensblur_cells(variant: str) -> None:
    # An impulse on mid-grey, so that negative weights are not clipped away: response = 0.5 + 0.5 kernel.
    probe = 0.5 + 0.5 * impulse().double()
    for level, radius in enumerate(DISTORTIONS["lensblur"].levels, start=1):
        response = (as_numpy(degrade(probe, "lensblur", level, variant=variant))[0] - 0.5) / 0.5
        r = int(radius)
        if variant == "arniqa":
            expected = np_port_disk(r)
        else:  # MATLAB: the area of each pixel inside the circle, here by 400 x 400 samples per pixel
            sub = (np.arange(400) + 0.5) / 400 - 0.5
            grid = (np.arange(-r, r + 1)[:, None] + sub).reshape(-1)
            inside = (grid[:, None] ** 2 + grid[None, :] ** 2 <= r * r).reshape(2 * r + 1, 400, 2 * r + 1, 400)
            expected = inside.mean(axis=(1, 3))
            expected /= expected.sum()
        atol = 1e-6 if variant == "arniqa" else 2e-4
        np.testing.assert_allclose(response[20 - r : 21 + r, 20 - r : 21 + r], expected, atol=atol)
        assert np.abs(response).sum() == pytest.approx(np.abs(expected).sum(), abs=1e-4)  # nothing outside
    # The port's edge branch: at radius 4 the pixel 2 rows and 4 columns off the centre gets a negative weight
    # (area formula with chord ends 1.5 and sqrt(16 - 1.5^2): 16 (asin terms) - 3.5 * 2.208 = -1.312 before
    # normalising), where MATLAB's disk covers 4.8 % of it.
    port = (as_numpy(degrade(probe, "lensblur", 3))[0] - 0.5) / 0.5
    matlab = (as_numpy(degrade(probe, "lensblur", 3, variant="kadid"))[0] - 0.5) / 0.5
    assert port[22, 24] < 0 and port[18, 16] < 0 and matlab[22, 24] > 0
    assert port[22, 24] == pytest.approx(np_port_disk(4)[6, 8], abs=1e-7)


def test_motionblur_cells() -> None:
    for level, length in enumerate(DISTORTIONS["motionblur"].levels, start=1):
        for seed in range(3):
            angle = int(torch.randint(0, 181, (1,), generator=seeded(seed)))  # the documented draw
            response = as_numpy(degrade(impulse(), "motionblur", level, seeded(seed)))[0]
            kernel = ref_motion(length, angle)
            kh, kw = kernel.shape
            size = max(kh, kw)
            top, left = 20 - (kh - 1) // 2, 20 - (kw - 1) // 2
            assert size <= 41
            # Correlation of an impulse with the kernel is the kernel turned by 180 degrees.
            np.testing.assert_allclose(response[top : top + kh, left : left + kw], kernel[::-1, ::-1], atol=1e-6)
            assert response.sum() == pytest.approx(1.0, abs=1e-5)
    # Closed form at angle 0, length 10: taps 1/2, 1 x 9, 1/2 along the row, over their sum 10.
    np.testing.assert_allclose(ref_motion(10, 0), np.array([[0.5] + [1.0] * 9 + [0.5]]) / 10, atol=1e-12)


@pytest.mark.parametrize("name", ["colordiff", "colorsat2", "brighten", "highsharpen"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_cielab_cells(name: str, variant: str) -> None:
    """ARNIQA reads B, G, R as R, G, B for CIELAB (and truncates colordiff and colorsat2 to 8 bits)."""
    images = small_image()
    rgb = as_numpy(images)
    for level, p in enumerate(DISTORTIONS[name].levels, start=1):
        x = rgb[::-1] if variant == "arniqa" else rgb
        lab = ref_rgb2lab(x)
        if name == "colordiff":
            lab[1:] = ref_filter(lab[1:], np_gaussian(1.5 * p + 2)) * p
            expected = ref_lab2rgb(lab)
        elif name == "colorsat2":
            lab[1:] *= p
            expected = ref_lab2rgb(lab)
        elif name == "brighten":
            lab[0] = np_parabola(lab[0] / 100, 0.5 + p / 2) * 100
            expected = (2 * np_parabola(x, 0.5 + p / 2) + ref_lab2rgb(lab)) / 3
        else:
            blurred = ndimage.correlate(lab[0], np_gaussian(6.0, radius=6), mode="nearest")
            lab[0] = lab[0] + p * (lab[0] - blurred)
            expected = ref_lab2rgb(lab)
        if variant == "arniqa" and name in ("colordiff", "colorsat2"):
            expected = np.floor(expected * 255) / 255
        if variant == "arniqa":
            expected = expected[::-1]
        out = as_numpy(degrade(images, name, level, variant=variant))
        np.testing.assert_allclose(out, expected, atol=1e-9, err_msg=f"{name} level {level}")


def test_cielab_channel_order_matters() -> None:
    """The two variants differ (the reversal is not a no-op) but agree on grey, where R = G = B."""
    images = small_image()
    assert (degrade(images, "colorsat2", 3) - degrade(images, "colorsat2", 3, variant="kadid")).abs().max() > 0.02
    flat = torch.full((1, 3, 4, 4), 0.4, dtype=torch.float64)
    np.testing.assert_allclose(
        as_numpy(degrade(flat, "highsharpen", 5)), as_numpy(degrade(flat, "highsharpen", 5, variant="kadid"))
    )


def test_quantization_cells() -> None:
    values = torch.arange(256, dtype=torch.float32) / 255
    ramp = values.reshape(1, 1, 16, 16).expand(1, 3, 16, 16).contiguous()
    for level, p in enumerate(DISTORTIONS["quantization"].levels, start=1):
        levels = int(p)
        edges = [0] + [(255 * k) // levels for k in range(1, levels)] + [256]
        index = np.searchsorted(edges, np.arange(256), side="left").astype(float)  # edges strictly below
        expected = (index - index.min()) / (index.max() - index.min())
        out = degrade(ramp, "quantization", level)[0, 0].flatten().numpy()
        np.testing.assert_allclose(out, expected, atol=1e-7, err_msg=f"level {level}")
    # By hand, 7 levels (edges 0, 36, 72, 109, 145, 182, 218, 256): black is bin 0, 36 bin 1, 37 bin 2,
    # 255 bin 7, so 0, 1/7, 2/7, 1; without black the bins 1..7 stretch to 0..1.
    pixels = torch.tensor([0.0, 36.0, 37.0, 255.0]) / 255
    out = degrade(pixels.reshape(1, 1, 1, 4).expand(1, 3, 1, 4), "quantization", 5)
    assert out[0, 0, 0].tolist() == pytest.approx([0, 1 / 7, 2 / 7, 1])
    out = degrade(pixels[1:].reshape(1, 1, 1, 3).expand(1, 3, 1, 3), "quantization", 5)
    assert out[0, 0, 0].tolist() == pytest.approx([0, 1 / 6, 1])


def test_colorshift_cells() -> None:
    images = small_image(20, 24)
    x = as_numpy(images)
    grey = 0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]
    padded = np.pad(grey, 1, mode="edge")
    magnitude = np.hypot((padded[1:-1, 2:] - padded[1:-1, :-2]) / 2, (padded[2:, 1:-1] - padded[:-2, 1:-1]) / 2)
    edges = ndimage.correlate(magnitude, np_gaussian(4.0), mode="nearest")
    edges = (edges - edges.min()) / (edges.max() - edges.min())
    # The port's perc(): the sort indices of each row stand in for the percentile values.
    indices_up = np.argsort(edges, axis=1, kind="stable")
    indices_down = np.argsort(1 - edges, axis=1, kind="stable")
    weight = np.maximum(np.minimum(edges, indices_up), 1 - indices_down)
    seen = set()
    for seed in range(4):
        direction = torch.rand(1, 2, generator=seeded(seed)).double().numpy()[0]  # the documented draw
        for level, amount in enumerate(DISTORTIONS["colorshift"].levels, start=1):
            s0, s1 = np.round(direction / np.linalg.norm(direction) * amount).astype(int)
            seen.add(np.sign(s0 - s1))
            moved = np.pad(x[1], ((0, 0), (s0, s0)), mode="edge")
            moved = np.pad(moved, ((s1, s1), (0, 0)), mode="edge")
            moved = np.roll(moved, (s0, s1), axis=(0, 1))[s1 : s1 + 20, s0 : s0 + 24]
            expected = x.copy()
            expected[1] = moved * weight + x[1] * (1 - weight)
            out = as_numpy(degrade(images, "colorshift", level, seeded(seed)))
            np.testing.assert_allclose(out, np.clip(expected, 0, 1), atol=1e-9, err_msg=f"{seed} {level}")
    assert seen >= {-1, 1}  # both wrap-arounds (rows and columns) were exercised


@pytest.mark.parametrize("variant", VARIANTS)
def test_codec_cells(variant: str, kodak: torch.Tensor) -> None:
    """The codecs see floor(255 x) (ARNIQA) or round(255 x) (MATLAB); 8 JPEG 2000 resolutions at 128 px."""
    images = (kodak * 255).round().clamp(1, 254) / 255 + 0.6 / 255
    x = as_numpy(images).transpose(1, 2, 0) * 255
    pixels = (np.floor(x) if variant == "arniqa" else np.round(x)).astype(np.uint8)
    for name in ("jpeg", "jpeg2000"):
        for level, p in enumerate(DISTORTIONS[name].levels, start=1):
            buffer = io.BytesIO()
            if name == "jpeg":
                Image.fromarray(pixels).save(buffer, format="JPEG", quality=int(p))
            else:
                options = {"quality_mode": "rates", "quality_layers": [int(p)], "num_resolutions": 8}
                Image.fromarray(pixels).save(buffer, format="JPEG2000", **options)
            buffer.seek(0)
            expected = np.asarray(Image.open(buffer).convert("RGB")).transpose(2, 0, 1) / 255
            out = as_numpy(degrade(images, name, level, variant=variant))
            np.testing.assert_allclose(out, expected, atol=1e-6, err_msg=f"{name} level {level}")


def test_whitenoise_cc_cells() -> None:
    images = small_image()
    x = as_numpy(images)
    for level, variance in enumerate(DISTORTIONS["whitenoiseCC"].levels, start=1):
        noise = torch.randn(1, 3, 14, 17, generator=seeded(level))[0].double().numpy() * math.sqrt(variance)
        luma = 0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]
        y = luma + noise[0]
        cb = (x[2] - luma) * 0.564 + 0.5 + noise[1] - 0.5  # kornia's offsets, added and taken away
        cr = (x[0] - luma) * 0.713 + 0.5 + noise[2] - 0.5
        expected = np.stack([y + 1.403 * cr, y - 0.714 * cr - 0.344 * cb, y + 1.773 * cb])
        out = as_numpy(degrade(images, "whitenoiseCC", level, seeded(level)))
        np.testing.assert_allclose(out, np.clip(expected, 0, 1), atol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_impulsenoise_cells(variant: str) -> None:
    images = grey(0.5, 40)
    for level, density in enumerate(DISTORTIONS["impulsenoise"].levels, start=1):
        expected = np.full((3, 40, 40), 0.5).reshape(-1)
        if variant == "arniqa":
            count = int(density * 3 * 40 * 40)
            where = torch.randint(0, 3 * 40 * 40, (1, count), generator=seeded(level))[0].numpy()
            expected[where[: count // 2]] = 1.0
            expected[where[count // 2 :]] = 0.0  # after the salt: pepper wins
        else:
            draw = torch.rand(1, 3, 40, 40, generator=seeded(level)).double().numpy().reshape(-1)
            expected[draw < density / 2] = 0.0
            expected[(draw >= density / 2) & (draw < density)] = 1.0
        out = as_numpy(degrade(images, "impulsenoise", level, seeded(level), variant=variant)).reshape(-1)
        np.testing.assert_array_equal(out, expected)


def np_jitter_pass(image: np.ndarray, column_shift: np.ndarray, row_shift: np.ndarray) -> np.ndarray:
    """One imscatter pass: replicate padding by the ceiled maxima, bilinear read, crop with swapped offsets."""
    _, h, w = image.shape
    pad_r, pad_c = math.ceil(abs(row_shift.max())), math.ceil(abs(column_shift.max()))
    padded = np.pad(image, ((0, 0), (pad_r, pad_r), (pad_c, pad_c)), mode="edge")
    dr = np.pad(row_shift, ((pad_r, pad_r), (pad_c, pad_c)), mode="edge")
    dc = np.pad(column_shift, ((pad_r, pad_r), (pad_c, pad_c)), mode="edge")
    ph, pw = padded.shape[1:]
    out = np.zeros_like(padded)
    for r in range(ph):
        for c in range(pw):
            y, x = r - dr[r, c], c - dc[r, c]
            y0, x0 = math.floor(y), math.floor(x)
            if y0 < 0 or x0 < 0 or y0 >= ph - 1 or x0 >= pw - 1:
                continue  # both neighbours clamp to one pixel: the port's weights cancel to 0
            fy, fx = y - y0, x - x0
            out[:, r, c] = (
                padded[:, y0, x0] * (1 - fy) * (1 - fx)
                + padded[:, y0, x0 + 1] * (1 - fy) * fx
                + padded[:, y0 + 1, x0] * fy * (1 - fx)
                + padded[:, y0 + 1, x0 + 1] * fy * fx
            )
    return out[:, pad_c : pad_c + h, pad_r : pad_r + w]


def test_jitter_cells() -> None:
    images = small_image(12, 13)
    moved_pass = False
    for level, spread in enumerate(DISTORTIONS["jitter"].levels, start=1):
        generator = seeded(level)
        expected = as_numpy(images)
        for _ in range(5):
            shift = torch.randn(1, 2, 12, 13, generator=generator)[0].double().numpy() * spread
            moved_pass |= math.ceil(abs(shift[0].max())) != math.ceil(abs(shift[1].max()))
            expected = np_jitter_pass(expected, shift[0], shift[1])
        out = as_numpy(degrade(images, "jitter", level, seeded(level)))
        np.testing.assert_allclose(out, np.clip(expected, 0, 1), atol=1e-5, err_msg=f"level {level}")
    assert moved_pass  # some pass had different paddings, so the image moved


@pytest.mark.parametrize("variant", VARIANTS)
def test_noneccpatch_cells(variant: str) -> None:
    images = small_image(56, 60)
    for level, count in enumerate(DISTORTIONS["noneccpatch"].levels, start=1):
        draw = torch.rand(1, int(count), 4, generator=seeded(level))[0].double().numpy()
        expected = as_numpy(images).copy()
        for u_row, u_col, v_row, v_col in draw:
            top, left = int(np.round(u_row * (56 - 48))) + 16, int(np.round(u_col * (60 - 48))) + 16
            to_top, to_left = int(np.round((v_row - 0.5) * 16 + top)), int(np.round((v_col - 0.5) * 16 + left))
            if variant == "arniqa":  # in place, one row after the other
                for row in range(16):
                    expected[:, to_top + row, to_left : to_left + 16] = expected[:, top + row, left : left + 16]
            else:
                patch = expected[:, top : top + 16, left : left + 16].copy()
                expected[:, to_top : to_top + 16, to_left : to_left + 16] = patch
        out = as_numpy(degrade(images, "noneccpatch", level, seeded(level), variant=variant))
        np.testing.assert_array_equal(out, expected, err_msg=f"level {level}")


def test_variants() -> None:
    images = small_image()
    same = {name for name, d in DISTORTIONS.items() if d.kadid_function is None}
    assert same == {
        "gaublur", "motionblur", "colorsat1", "whitenoise", "whitenoiseCC", "multnoise", "darken", "meanshift",
        "pixelate", "quantization", "colorblock", "lincontrchange", "nonlincontrchange",
    }  # fmt: skip
    for name in same:
        assert torch.equal(degrade(images, name, 4, seeded()), degrade(images, name, 4, seeded(), variant="kadid"))
    for bad in ("matlab", None, "ARNIQA"):
        with pytest.raises(ValueError, match="Argument `variant` must be one of 'arniqa', 'kadid'"):
            degrade(images, "jpeg", 1, variant=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="variant"):
        random_composition(images, variant="kornia")
    out, applied = random_composition(images, generator=seeded(2), variant="kadid")
    assert out.shape == images.shape and applied


# ---------------------------------------------------------------------------------------------------- CUDA


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", NAMES)
def test_cuda_matches_cpu(name: str, pair: torch.Tensor) -> None:
    cpu = degrade(pair, name, 3, seeded())
    gpu = degrade(pair.cuda(), name, 3, seeded())
    assert gpu.device.type == "cuda" and gpu.dtype == cpu.dtype
    assert (gpu.cpu() - cpu).abs().mean() < 1e-4, name
