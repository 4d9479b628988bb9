"""Synthetic degradation bank: the 24 KADID-10k / KADIS-700k distortions, 5 levels each, batched in torch.

QualiCLIP learns quality from pairs of the same crop degraded at increasing levels, so each parameter keeps
the meaning it has in the KADID-10k generator (``imdist_generator.m``), with the level tables of ARNIQA.
Strength grows with the level except where the sign alternates (meanshift, lincontrchange; see the tests).
The parameter ``p`` of each distortion, per group:

blur
- gaublur: standard deviation in pixels of the Gaussian kernel (kernel size 2 * ceil(2 p) + 1).
- lensblur: radius in pixels of the uniform disk kernel (edge pixels weighted by the area they cover).
- motionblur: length in pixels of the line kernel, at an angle drawn uniformly in [0, 180) degrees per image.
color_distortion
- colordiff: CIELAB a* and b* are blurred with a Gaussian of sigma 1.5 p + 2, then multiplied by p.
- colorshift: the green channel is moved p pixels in a random down-right direction, blended in near edges.
- colorsat1: factor on the HSV saturation (1 = unchanged, 0 = grey, < 0 = complementary hue).
- colorsat2: factor on the CIELAB chroma a*, b* (1 = unchanged).
jpeg
- jpeg2000: compression ratio of the JPEG 2000 encoder (Pillow ``quality_mode="rates"``).
- jpeg: JPEG quality factor (0-100, lower is worse).
noise
- whitenoise: variance of additive Gaussian noise on each RGB value.
- whitenoiseCC: variance of additive Gaussian noise on each of Y, Cb, Cr (full-range BT.601).
- impulsenoise: salt-and-pepper density: fraction of the channel values set to 0 or 1 (half each).
- multnoise: variance of the Gaussian noise n in x (1 + n).
brightness_change
- brighten: tone-curve strength: 2/3 of the RGB curve x + 2 p x (1 - x), 1/3 the same curve on L*.
- darken: tone-curve strength: RGB curve x - 2 p x (1 - x).
- meanshift: constant added to every value (sign = direction).
spatial_distortion
- jitter: standard deviation in pixels of independent per-pixel displacements, applied 5 times (bilinear).
- noneccpatch: number of 16 x 16 patches copied, one after the other, to a random spot at most 8 pixels away.
- pixelate: nearest-neighbour down-scaling by 0.95 - p ** 0.6, then back up.
- quantization: number of levels per channel (equal-width thresholds; level indices stretched to [0, 1]).
- colorblock: number of 32 x 32 blocks of a random uniform colour pasted at random positions.
sharpness_contrast
- highsharpen: unsharp-masking amount on L*: L + p (L - G * L), G a Gaussian of sigma 6 cut at 6 pixels.
- lincontrchange: not-a-knot spline tone curve through (0.3, 0.25 - p / 4), (0.5, 0.5), (0.7, 0.75 + p / 4);
  p > 0 raises contrast, p < 0 lowers it, and p = 0 is already a mild contrast boost, not the identity.
- nonlincontrchange: half-width of the output range: [0, 1] is mapped (linearly) onto [0.5 - p, 0.5 + p].

Device: everything runs batched on the input's device except ``jpeg`` and ``jpeg2000``, which go through
Pillow on the CPU (``cpu_only=True``) and come back. Random numbers are always drawn on the CPU from the
given ``torch.Generator`` (in float32, whatever the image dtype) and then moved, so a seed gives the same
degradation on every device and dtype up to floating-point rounding; on a GPU that CPU draw is most of the
cost of the noise distortions and jitter.

Dtypes: float32 and float64 are computed in their own precision; float16 and bfloat16 are computed in float32
and cast back. Images smaller than a patch (noneccpatch, colorblock) get patches of the image's size.
"""

from __future__ import annotations

import functools
import io
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = ["DISTORTIONS", "GROUPS", "Distortion", "DistortionFunction", "degrade", "random_composition"]

#: ``function(images, parameter, generator) -> images``; images are float (N, 3, H, W), not yet clipped.
DistortionFunction = Callable[[torch.Tensor, float, "torch.Generator | None"], torch.Tensor]


# --------------------------------------------------------------------------------------------- random numbers


def _uniform(generator: torch.Generator | None, *shape: int) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device="cpu")


def _normal(generator: torch.Generator | None, *shape: int) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device="cpu")


def _like(tensor: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """``tensor`` on the device and in the floating dtype of ``images``."""
    return tensor.to(device=images.device, dtype=images.dtype)


# -------------------------------------------------------------------------------------------------- filtering


def _depthwise(images: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Correlate channel i of the flattened batch with ``kernels[i]`` (odd sizes), replicating the border.

    One depthwise convolution over all N * C channels: much faster on the CPU than a single-channel
    convolution over a batch of N * C images.
    """
    n, c, h, w = images.shape
    kh, kw = kernels.shape[-2:]
    padded = F.pad(images.reshape(1, n * c, h, w), (kw // 2, kw // 2, kh // 2, kh // 2), mode="replicate")
    weight = _like(kernels, images).unsqueeze(1).contiguous()
    return F.conv2d(padded, weight, groups=n * c).reshape(n, c, h, w)


def _filter(images: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Every channel of every image correlated with the same 2-D kernel."""
    return _depthwise(images, kernel.expand(images.shape[0] * images.shape[1], *kernel.shape))


def _filter_per_image(images: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Each image correlated with its own (k, k) kernel (e.g. a motion blur at its own angle)."""
    return _depthwise(images, kernels.repeat_interleave(images.shape[1], dim=0))


@functools.lru_cache(maxsize=64)
def _gaussian_taps(sigma: float, radius: int | None = None) -> torch.Tensor:
    """Normalised 1-D Gaussian; the default support 2 * ceil(2 sigma) + 1 is the generator's."""
    radius = math.ceil(2 * sigma) if radius is None else radius
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-(offsets**2) / (2 * sigma**2))
    return taps / taps.sum()


def _gaussian_blur(images: torch.Tensor, sigma: float, radius: int | None = None) -> torch.Tensor:
    # Separable, and replicate padding is separable too, so this equals the 2-D filter exactly.
    taps = _gaussian_taps(float(sigma), radius)
    return _filter(_filter(images, taps[None, :]), taps[:, None])


@functools.lru_cache(maxsize=16)
def _disk_kernel(radius: float, samples: int = 64) -> torch.Tensor:
    """Uniform disk; each pixel weighted by the fraction of its square inside the circle (supersampled)."""
    half = math.ceil(radius - 0.5)
    size = 2 * half + 1
    sub = (torch.arange(samples, dtype=torch.float64) + 0.5) / samples - 0.5
    positions = (torch.arange(-half, half + 1, dtype=torch.float64)[:, None] + sub).reshape(-1)
    inside = (positions[:, None] ** 2 + positions[None, :] ** 2 <= radius**2).to(torch.float64)
    coverage = inside.reshape(size, samples, size, samples).mean(dim=(1, 3))
    return coverage / coverage.sum()


def _motion_kernels(length: float, angles: torch.Tensor) -> torch.Tensor:
    """One line kernel per angle (degrees, counter-clockwise): weight 1 - distance to the segment, normalised."""
    half = (max(float(length), 1.0) - 1.0) / 2.0
    reach = math.ceil(half) + 1
    offsets = torch.arange(-reach, reach + 1, dtype=torch.float64)
    rows, cols = offsets[:, None], offsets[None, :]
    theta = torch.deg2rad(angles.to(torch.float64))[:, None, None]
    along_x, along_y = torch.cos(theta), -torch.sin(theta)  # image rows grow downwards
    t = (cols * along_x + rows * along_y).clamp(-half, half)
    distance = torch.hypot(cols - t * along_x, rows - t * along_y)
    weights = (1.0 - distance).clamp_min(0.0)
    return weights / weights.sum(dim=(1, 2), keepdim=True)


# ------------------------------------------------------------------------------------------------ colour spaces

# sRGB (D65) to CIE XYZ, with XYZ divided by the D65 white so that white maps to (1, 1, 1).
_RGB_TO_XYZN = (
    torch.tensor(
        [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]],
        dtype=torch.float64,
    )
    / torch.tensor([0.95047, 1.0, 1.08883], dtype=torch.float64)[:, None]
)
_XYZN_TO_RGB = torch.linalg.inv(_RGB_TO_XYZN)
_LUMA = torch.tensor([[0.299, 0.587, 0.114]], dtype=torch.float64)
# Full-range BT.601 Y, Cb, Cr without the 0.5 offsets (noise does not see offsets), and its inverse.
_RGB_TO_YCBCR = torch.stack(
    (_LUMA[0], (torch.tensor([0.0, 0.0, 1.0]) - _LUMA[0]) / 1.772, (torch.tensor([1.0, 0.0, 0.0]) - _LUMA[0]) / 1.402)
)
_YCBCR_TO_RGB = torch.linalg.inv(_RGB_TO_YCBCR)
_LAB_DELTA = 6.0 / 29.0


def _mix(matrix: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Apply a (k, 3) colour matrix to every pixel."""
    return torch.einsum("ij,njhw->nihw", _like(matrix, images), images)


def _rgb_to_lab(images: torch.Tensor) -> torch.Tensor:
    linear = torch.where(images > 0.04045, ((images.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4, images / 12.92)
    xyz = _mix(_RGB_TO_XYZN, linear)
    cube = _LAB_DELTA**3
    f = torch.where(xyz > cube, xyz.clamp_min(cube) ** (1.0 / 3.0), xyz / (3 * _LAB_DELTA**2) + 4.0 / 29.0)
    fx, fy, fz = f.unbind(1)
    return torch.stack((116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)), dim=1)


def _lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Inverse of ``_rgb_to_lab``; out-of-gamut colours come back outside [0, 1] (clipped later)."""
    lightness, a, b = lab.unbind(1)
    fy = (lightness + 16.0) / 116.0
    f = torch.stack((fy + a / 500.0, fy, fy - b / 200.0), dim=1)
    xyz = torch.where(f > _LAB_DELTA, f**3, 3 * _LAB_DELTA**2 * (f - 4.0 / 29.0))
    linear = _mix(_XYZN_TO_RGB, xyz)
    return torch.where(linear > 0.0031308, 1.055 * linear.clamp_min(0.0031308) ** (1 / 2.4) - 0.055, 12.92 * linear)


# --------------------------------------------------------------------------------------------------- tone curves


def _quadratic_curve(x: torch.Tensor, middle: float) -> torch.Tensor:
    """The generator's one-point curve: the parabola through (0, 0), (0.5, middle), (1, 1), clipped."""
    return (x + (4.0 * middle - 2.0) * x * (1.0 - x)).clamp(0.0, 1.0)


@functools.lru_cache(maxsize=16)
def _not_a_knot_spline(xs: tuple[float, ...], ys: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Cubic spline with not-a-knot ends (as MATLAB's ``spline``): breaks and per-piece coefficients c0..c3."""
    pieces = len(xs) - 1
    if pieces < 3:
        raise ValueError("a not-a-knot spline needs at least 4 points")
    widths = [xs[j + 1] - xs[j] for j in range(pieces)]
    system = torch.zeros(4 * pieces, 4 * pieces, dtype=torch.float64)
    target = torch.zeros(4 * pieces, dtype=torch.float64)
    equations = iter(range(4 * pieces))
    for j, h in enumerate(widths):  # interpolation at both ends of every piece
        row = next(equations)
        system[row, 4 * j], target[row] = 1.0, ys[j]
        row = next(equations)
        system[row, 4 * j : 4 * j + 4] = torch.tensor([1.0, h, h**2, h**3])
        target[row] = ys[j + 1]
    for j, h in enumerate(widths[:-1]):  # continuous first and second derivatives at interior breaks
        row = next(equations)
        system[row, 4 * j + 1 : 4 * j + 4] = torch.tensor([1.0, 2 * h, 3 * h**2])
        system[row, 4 * (j + 1) + 1] = -1.0
        row = next(equations)
        system[row, 4 * j + 2 : 4 * j + 4] = torch.tensor([2.0, 6 * h])
        system[row, 4 * (j + 1) + 2] = -2.0
    for j in (0, pieces - 2):  # not-a-knot: the third derivative is continuous at the second and penultimate breaks
        row = next(equations)
        system[row, 4 * j + 3], system[row, 4 * (j + 1) + 3] = 1.0, -1.0
    coefficients = torch.linalg.solve(system, target).reshape(pieces, 4)
    return torch.tensor(xs, dtype=torch.float64), coefficients


def _spline_curve(x: torch.Tensor, xs: tuple[float, ...], ys: tuple[float, ...]) -> torch.Tensor:
    breaks, coefficients = _not_a_knot_spline(xs, ys)
    breaks, coefficients = _like(breaks, x), _like(coefficients, x)
    piece = torch.bucketize(x.contiguous(), breaks[1:-1], right=True)
    t = x - breaks[piece]
    c = coefficients[piece]
    return (((c[..., 3] * t + c[..., 2]) * t + c[..., 1]) * t + c[..., 0]).clamp(0.0, 1.0)


# -------------------------------------------------------------------------------------------------- distortions


def _gaublur(images: torch.Tensor, sigma: float, generator: torch.Generator | None) -> torch.Tensor:
    return _gaussian_blur(images, sigma)


def _lensblur(images: torch.Tensor, radius: float, generator: torch.Generator | None) -> torch.Tensor:
    return _filter(images, _disk_kernel(float(radius)))


def _motionblur(images: torch.Tensor, length: float, generator: torch.Generator | None) -> torch.Tensor:
    angles = _uniform(generator, images.shape[0]) * 180.0
    return _filter_per_image(images, _motion_kernels(length, angles))


def _colordiff(images: torch.Tensor, amount: float, generator: torch.Generator | None) -> torch.Tensor:
    lab = _rgb_to_lab(images)
    chroma = _gaussian_blur(lab[:, 1:], 1.5 * amount + 2.0) * amount
    return _lab_to_rgb(torch.cat((lab[:, :1], chroma), dim=1))


def _colorshift(images: torch.Tensor, amount: float, generator: torch.Generator | None) -> torch.Tensor:
    n, _, h, w = images.shape
    # Where to blend: smoothed gradient magnitude of the grey image, stretched to [0, 1], tails clipped at 1 %.
    grey = F.pad(_mix(_LUMA, images), (1, 1, 1, 1), mode="replicate")
    gx = (grey[..., 1:-1, 2:] - grey[..., 1:-1, :-2]) / 2
    gy = (grey[..., 2:, 1:-1] - grey[..., :-2, 1:-1]) / 2
    edges = _gaussian_blur(torch.sqrt(gx**2 + gy**2), 4.0).flatten(1)
    low, high = edges.amin(dim=1, keepdim=True), edges.amax(dim=1, keepdim=True)
    edges = torch.where(high > low, (edges - low) / (high - low).clamp_min(torch.finfo(edges.dtype).tiny), edges)
    count = edges.shape[1]
    floor = edges.kthvalue(max(1, math.ceil(0.01 * count)), dim=1, keepdim=True).values
    ceiling = edges.kthvalue(max(1, math.ceil(0.99 * count)), dim=1, keepdim=True).values
    weight = torch.minimum(torch.maximum(edges, floor), ceiling).reshape(n, h, w)
    # What to blend: green moved by `amount` pixels along a random direction of the first quadrant.
    direction = _uniform(generator, n, 2)
    offset = torch.round(direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-12) * amount).long()
    rows = (torch.arange(h)[None] - offset[:, 1:]).clamp(0, h - 1).to(images.device)
    cols = (torch.arange(w)[None] - offset[:, :1]).clamp(0, w - 1).to(images.device)
    green = images[:, 1]
    moved = green[torch.arange(n, device=images.device)[:, None, None], rows[:, :, None], cols[:, None, :]]
    blended = moved * weight + green * (1.0 - weight)
    return torch.stack((images[:, 0], blended, images[:, 2]), dim=1)


def _colorsat1(images: torch.Tensor, factor: float, generator: torch.Generator | None) -> torch.Tensor:
    # HSV keeps V = max(R, G, B) and every channel sits at V - S * V * (hue term), so scaling S scales the
    # distance of each channel below the maximum (exactly the HSV round trip, negative factors included).
    value = images.amax(dim=1, keepdim=True)
    return value - factor * (value - images)


def _colorsat2(images: torch.Tensor, factor: float, generator: torch.Generator | None) -> torch.Tensor:
    lab = _rgb_to_lab(images)
    return _lab_to_rgb(torch.cat((lab[:, :1], lab[:, 1:] * factor), dim=1))


def _pillow_round_trip(images: torch.Tensor, **save_options: object) -> torch.Tensor:
    """Encode and decode every image with Pillow on the CPU (8-bit, as the codecs require)."""
    pixels = (images * 255.0).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    decoded = []
    for array in pixels:
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(array)).save(buffer, **save_options)
        buffer.seek(0)
        with Image.open(buffer) as image:
            decoded.append(np.asarray(image.convert("RGB")))
    restored = torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2)
    return restored.to(device=images.device, dtype=images.dtype) / 255.0


def _jpeg2000(images: torch.Tensor, ratio: float, generator: torch.Generator | None) -> torch.Tensor:
    # OpenJPEG needs every side to be at least 2 ** (resolutions - 1) pixels.
    resolutions = min(8, int(math.log2(min(images.shape[-2:]))) + 1)
    return _pillow_round_trip(
        images, format="JPEG2000", quality_mode="rates", quality_layers=[float(ratio)], num_resolutions=resolutions
    )


def _jpeg(images: torch.Tensor, quality: float, generator: torch.Generator | None) -> torch.Tensor:
    return _pillow_round_trip(images, format="JPEG", quality=int(quality))


def _whitenoise(images: torch.Tensor, variance: float, generator: torch.Generator | None) -> torch.Tensor:
    return images + _like(_normal(generator, *images.shape), images) * math.sqrt(variance)


def _whitenoise_cc(images: torch.Tensor, variance: float, generator: torch.Generator | None) -> torch.Tensor:
    # YCbCr is affine in RGB, so noise added in YCbCr reaches RGB through the inverse matrix alone.
    noise = _like(_normal(generator, *images.shape), images) * math.sqrt(variance)
    return images + _mix(_YCBCR_TO_RGB, noise)


def _impulsenoise(images: torch.Tensor, density: float, generator: torch.Generator | None) -> torch.Tensor:
    draw = _uniform(generator, *images.shape).to(images.device)
    pepper, salt = draw < density / 2, (draw >= density / 2) & (draw < density)
    return images.masked_fill(pepper, 0.0).masked_fill(salt, 1.0)


def _multnoise(images: torch.Tensor, variance: float, generator: torch.Generator | None) -> torch.Tensor:
    return images * (1.0 + _like(_normal(generator, *images.shape), images) * math.sqrt(variance))


def _brighten(images: torch.Tensor, amount: float, generator: torch.Generator | None) -> torch.Tensor:
    middle = 0.5 + amount / 2
    lab = _rgb_to_lab(images)
    lightness = _quadratic_curve(lab[:, :1] / 100.0, middle) * 100.0
    from_lab = _lab_to_rgb(torch.cat((lightness, lab[:, 1:]), dim=1)).clamp(0.0, 1.0)
    return (2.0 * _quadratic_curve(images, middle) + from_lab) / 3.0


def _darken(images: torch.Tensor, amount: float, generator: torch.Generator | None) -> torch.Tensor:
    return _quadratic_curve(images, 0.5 - amount / 2)


def _meanshift(images: torch.Tensor, shift: float, generator: torch.Generator | None) -> torch.Tensor:
    return images + shift


def _jitter(images: torch.Tensor, spread: float, generator: torch.Generator | None) -> torch.Tensor:
    n, _, h, w = images.shape
    rows = torch.arange(h, device=images.device, dtype=images.dtype)[None, :, None]
    cols = torch.arange(w, device=images.device, dtype=images.dtype)[None, None, :]
    out = images
    for _ in range(5):
        shift = _like(_normal(generator, n, 2, h, w), images) * spread
        grid = torch.stack(
            ((cols - shift[:, 0]) * (2.0 / max(w - 1, 1)) - 1.0, (rows - shift[:, 1]) * (2.0 / max(h - 1, 1)) - 1.0),
            dim=-1,
        )
        out = F.grid_sample(out, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out


def _patch_starts(
    extent: int, size: int, reach: int, source: torch.Tensor, move: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Source corners kept ``reach`` pixels from the border, destinations within +-reach / 2 of them."""
    low = min(reach, extent - size)
    high = max(low, extent - size - reach)
    start = torch.round(source * (high - low)) + low
    target = torch.round((move - 0.5) * reach + start).clamp(0, extent - size)
    return start.long(), target.long()


def _noneccpatch(images: torch.Tensor, count: float, generator: torch.Generator | None) -> torch.Tensor:
    n, _, h, w = images.shape
    count, size, reach = int(count), min(16, h, w), 16
    draw = _uniform(generator, n, count, 4)
    top, to_top = _patch_starts(h, size, reach, draw[..., 0], draw[..., 2])
    left, to_left = _patch_starts(w, size, reach, draw[..., 1], draw[..., 3])
    top, to_top, left, to_left = (t.to(images.device) for t in (top, to_top, left, to_left))
    out = images.clone()
    pixels = out.permute(0, 2, 3, 1)  # a view: writes land in `out`
    batch = torch.arange(n, device=images.device)[:, None, None]
    span = torch.arange(size, device=images.device)
    for i in range(count):  # sequential: a later patch may copy pixels an earlier one moved
        patch = pixels[batch, (top[:, i, None] + span)[:, :, None], (left[:, i, None] + span)[:, None, :]]
        pixels[batch, (to_top[:, i, None] + span)[:, :, None], (to_left[:, i, None] + span)[:, None, :]] = patch
    return out


def _pixelate(images: torch.Tensor, strength: float, generator: torch.Generator | None) -> torch.Tensor:
    h, w = images.shape[-2:]
    scale = 0.95 - strength**0.6
    small = F.interpolate(images, size=(max(1, int(h * scale)), max(1, int(w * scale))), mode="nearest")
    return F.interpolate(small, size=(h, w), mode="nearest")


def _quantization(images: torch.Tensor, levels: float, generator: torch.Generator | None) -> torch.Tensor:
    levels = int(levels)
    thresholds = torch.arange(1, levels, device=images.device, dtype=images.dtype) / levels
    index = torch.bucketize(images.contiguous(), thresholds).to(images.dtype)  # 0 .. levels - 1
    low, high = index.amin(dim=(1, 2, 3), keepdim=True), index.amax(dim=(1, 2, 3), keepdim=True)
    return torch.where(high > low, (index - low) / (high - low).clamp_min(1.0), index / (levels - 1))


def _colorblock(images: torch.Tensor, count: float, generator: torch.Generator | None) -> torch.Tensor:
    n, _, h, w = images.shape
    count, size = int(count), min(32, h, w)
    draw = _uniform(generator, n, count, 5)
    colours = _like(draw[..., :3], images)
    top = torch.floor(draw[..., 3] * (h - size)).long().to(images.device)
    left = torch.floor(draw[..., 4] * (w - size)).long().to(images.device)
    out = images.clone()
    pixels = out.permute(0, 2, 3, 1)
    batch = torch.arange(n, device=images.device)[:, None, None]
    span = torch.arange(size, device=images.device)
    for i in range(count):
        rows, cols = (top[:, i, None] + span)[:, :, None], (left[:, i, None] + span)[:, None, :]
        pixels[batch, rows, cols] = colours[:, i, None, None, :]
    return out


def _highsharpen(images: torch.Tensor, amount: float, generator: torch.Generator | None) -> torch.Tensor:
    lab = _rgb_to_lab(images)
    lightness = lab[:, :1]
    sharpened = lightness + amount * (lightness - _gaussian_blur(lightness, 6.0, radius=6))
    return _lab_to_rgb(torch.cat((sharpened, lab[:, 1:]), dim=1))


def _lincontrchange(images: torch.Tensor, amount: float, generator: torch.Generator | None) -> torch.Tensor:
    return _spline_curve(images, (0.0, 0.3, 0.5, 0.7, 1.0), (0.0, 0.25 - amount / 4, 0.5, 0.75 + amount / 4, 1.0))


def _nonlincontrchange(images: torch.Tensor, half_width: float, generator: torch.Generator | None) -> torch.Tensor:
    return 0.5 + 2.0 * half_width * (images - 0.5)


# ---------------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Distortion:
    """One distortion: its KADID parameter at levels 1..5 and whether it has to run on the CPU."""

    name: str
    group: str
    levels: tuple[float, ...]
    function: DistortionFunction
    cpu_only: bool = False


_TABLE: tuple[tuple[str, str, tuple[float, ...], DistortionFunction, bool], ...] = (
    ("gaublur", "blur", (0.1, 0.5, 1, 2, 5), _gaublur, False),
    ("lensblur", "blur", (1, 2, 4, 6, 8), _lensblur, False),
    ("motionblur", "blur", (1, 2, 4, 6, 10), _motionblur, False),
    ("colordiff", "color_distortion", (1, 3, 6, 8, 12), _colordiff, False),
    ("colorshift", "color_distortion", (1, 3, 6, 8, 12), _colorshift, False),
    ("colorsat1", "color_distortion", (0.4, 0.2, 0.1, 0, -0.4), _colorsat1, False),
    ("colorsat2", "color_distortion", (1, 2, 3, 6, 9), _colorsat2, False),
    ("jpeg2000", "jpeg", (16, 32, 45, 120, 170), _jpeg2000, True),
    ("jpeg", "jpeg", (43, 36, 24, 7, 4), _jpeg, True),
    ("whitenoise", "noise", (0.001, 0.002, 0.003, 0.005, 0.01), _whitenoise, False),
    ("whitenoiseCC", "noise", (0.0001, 0.0005, 0.001, 0.002, 0.003), _whitenoise_cc, False),
    ("impulsenoise", "noise", (0.001, 0.005, 0.01, 0.02, 0.03), _impulsenoise, False),
    ("multnoise", "noise", (0.001, 0.005, 0.01, 0.02, 0.05), _multnoise, False),
    ("brighten", "brightness_change", (0.1, 0.2, 0.4, 0.7, 1.1), _brighten, False),
    ("darken", "brightness_change", (0.05, 0.1, 0.2, 0.4, 0.8), _darken, False),
    ("meanshift", "brightness_change", (0, 0.08, -0.08, 0.15, -0.15), _meanshift, False),
    ("jitter", "spatial_distortion", (0.05, 0.1, 0.2, 0.5, 1), _jitter, False),
    ("noneccpatch", "spatial_distortion", (20, 40, 60, 80, 100), _noneccpatch, False),
    ("pixelate", "spatial_distortion", (0.01, 0.05, 0.1, 0.2, 0.5), _pixelate, False),
    ("quantization", "spatial_distortion", (20, 16, 13, 10, 7), _quantization, False),
    ("colorblock", "spatial_distortion", (2, 4, 6, 8, 10), _colorblock, False),
    ("highsharpen", "sharpness_contrast", (1, 2, 3, 6, 12), _highsharpen, False),
    ("lincontrchange", "sharpness_contrast", (0, 0.15, -0.4, 0.3, -0.6), _lincontrchange, False),
    ("nonlincontrchange", "sharpness_contrast", (0.4, 0.3, 0.2, 0.1, 0.05), _nonlincontrchange, False),
)

#: The 24 distortions, in the order of the KADID table.
DISTORTIONS: dict[str, Distortion] = {
    name: Distortion(name, group, tuple(float(v) for v in levels), function, cpu_only)
    for name, group, levels, function, cpu_only in _TABLE
}

#: Group -> names of its distortions; a composition takes at most one distortion per group.
GROUPS: dict[str, tuple[str, ...]] = {}
for _distortion in DISTORTIONS.values():
    GROUPS[_distortion.group] = (*GROUPS.get(_distortion.group, ()), _distortion.name)
del _distortion

NUM_LEVELS = 5


# ------------------------------------------------------------------------------------------------- public API


def _check_generator(generator: torch.Generator | None) -> None:
    if generator is not None and (not isinstance(generator, torch.Generator) or generator.device.type != "cpu"):
        raise ValueError("generator must be None or a CPU torch.Generator (random numbers are drawn on the CPU)")


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3 or images.numel() == 0:
        raise ValueError(f"images must have shape (N, 3, H, W) with N, H, W >= 1, got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be a floating-point tensor in [0, 1], got {images.dtype}")
    low, high = torch.aminmax(images)
    if not (low >= 0 and high <= 1):  # also false for NaN
        raise ValueError(f"images must lie in [0, 1], got values in [{low.item():g}, {high.item():g}]")


def degrade(images: torch.Tensor, name: str, level: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply one distortion at ``level`` (1 = mildest .. 5 = strongest) to a batch.

    ``images`` is float (N, 3, H, W) in [0, 1] on any device; the result has the same shape, dtype and
    device, is clipped to [0, 1] and never aliases or modifies the input. Random choices (noise, angles,
    positions) are drawn per image from ``generator`` (a CPU generator; ``None`` uses torch's global one).
    No autograd graph is recorded: these are data, not a differentiable layer.
    """
    if name not in DISTORTIONS:
        raise ValueError(f"unknown distortion {name!r}; valid names: {', '.join(DISTORTIONS)}")
    if isinstance(level, bool) or not isinstance(level, numbers.Integral) or not 1 <= level <= NUM_LEVELS:
        raise ValueError(f"level must be an int in 1..{NUM_LEVELS}, got {level!r}")
    _check_images(images)
    _check_generator(generator)
    distortion = DISTORTIONS[name]
    work = images if images.dtype in (torch.float32, torch.float64) else images.float()
    with torch.no_grad():
        out = distortion.function(work, distortion.levels[int(level) - 1], generator)
    return out.clamp(0.0, 1.0).to(images.dtype)


def random_composition(
    images: torch.Tensor,
    max_distortions: int = 4,
    generator: torch.Generator | None = None,
    level_std: float = 2.5,
) -> tuple[torch.Tensor, list[tuple[str, int]]]:
    """Degrade a batch with a random chain of distortions, the ARNIQA degradation model.

    Draws 1..``max_distortions`` distinct groups in random order, one distortion per group, and a level for
    each from a half-Gaussian over the level indices (mean at level 1, ``level_std`` in levels), so that mild
    levels dominate; the chain is applied to the whole batch and clipped to [0, 1] after every step.
    Returns the degraded batch and the applied ``(name, level)`` list, in order.
    """
    if isinstance(max_distortions, bool) or not isinstance(max_distortions, numbers.Integral):
        raise ValueError(f"max_distortions must be an int, got {max_distortions!r}")
    if not 1 <= max_distortions <= len(GROUPS):
        raise ValueError(f"max_distortions must be in 1..{len(GROUPS)} (one per group), got {max_distortions}")
    if not (isinstance(level_std, numbers.Real) and math.isfinite(level_std) and level_std > 0):
        raise ValueError(f"level_std must be a positive finite number, got {level_std!r}")
    _check_images(images)
    _check_generator(generator)

    count = int(torch.randint(1, int(max_distortions) + 1, (1,), generator=generator))
    group_names = list(GROUPS)
    chosen = [group_names[i] for i in torch.randperm(len(group_names), generator=generator)[:count].tolist()]
    level_weights = torch.exp(-(torch.arange(NUM_LEVELS, dtype=torch.float64) ** 2) / (2 * float(level_std) ** 2))
    plan: list[tuple[str, int]] = []
    for group in chosen:
        names = GROUPS[group]
        name = names[int(torch.randint(len(names), (1,), generator=generator))]
        level = int(torch.multinomial(level_weights, 1, generator=generator)) + 1
        plan.append((name, level))

    out = images
    for name, level in plan:
        out = degrade(out, name, level, generator)
    return out, plan
