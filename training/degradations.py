"""Synthetic degradation bank: the 24 KADID-10k / KADIS-700k distortions, 5 levels each, batched in torch.

QualiCLIP's training degradations are ARNIQA's (same authors, same 24 distortions and level table), so the
default variant, ``"arniqa"``, computes each distortion as ARNIQA's PyTorch port of the KADID-10k generator
does, departures from MATLAB included: that is what the published checkpoint was trained on. The variant
``"kadid"`` keeps MATLAB's semantics where the port departs from them and someone may want them (true RGB
channel order in CIELAB, the exact disk kernel, rounding to 8 bits, ...); see docs/training.md.
Strength grows with the level except where the sign alternates (meanshift, lincontrchange; see the tests).
The parameter ``p`` of each distortion, per group ("arniqa" unless said otherwise):

blur
- gaublur: standard deviation in pixels of the Gaussian kernel (kernel size 2 * ceil(2 p) + 1).
- lensblur: radius of the disk kernel. "kadid": MATLAB's ``fspecial('disk')`` (each pixel weighted by the
  area of it inside the circle); "arniqa": the port's version of it, whose edge pixels take another branch
  of the area formula (some weights come out negative), normalised to sum 1.
- motionblur: length in pixels of MATLAB's ``fspecial('motion')`` line kernel, at an integer angle drawn
  uniformly in 0..180 degrees per image.
color_distortion
- colordiff: CIELAB a* and b* are blurred with a Gaussian of sigma 1.5 p + 2, then multiplied by p.
- colorshift: the green channel is moved by p pixels in a random down-right direction, blended in near edges.
- colorsat1: factor on the HSV saturation (1 = unchanged, 0 = grey, < 0 = complementary hue).
- colorsat2: factor on the CIELAB chroma a*, b* (1 = unchanged).
jpeg
- jpeg2000: compression ratio of the JPEG 2000 encoder (Pillow ``quality_mode="rates"``).
- jpeg: JPEG quality factor (0-100, lower is worse).
noise
- whitenoise: variance of additive Gaussian noise on each RGB value.
- whitenoiseCC: variance of additive Gaussian noise on each of Y, Cb, Cr (kornia's BT.601 coefficients).
- impulsenoise: salt-and-pepper density. "arniqa": int(p * 3 H W) values drawn with replacement, the first
  half set to 1, the rest to 0; "kadid": each value independently 0 with probability p / 2, 1 with p / 2.
- multnoise: variance of the Gaussian noise n in x (1 + n).
brightness_change
- brighten: tone-curve strength: 2/3 of the RGB curve x + 2 p x (1 - x), 1/3 the same curve on L*.
- darken: tone-curve strength: RGB curve x - 2 p x (1 - x).
- meanshift: constant added to every value (sign = direction).
spatial_distortion
- jitter: standard deviation in pixels of independent per-pixel displacements, applied 5 times (bilinear).
- noneccpatch: number of 16 x 16 patches copied, one after the other, to a random spot at most 8 pixels away.
- pixelate: nearest-neighbour down-scaling by 0.95 - p ** 0.6, then back up.
- quantization: number of equal-width bins of [0, 255] (integer edges floor(255 k / p)); each RGB value is
  replaced by its bin index (0 for exact black, 1..p above) and the indices are stretched to [0, 1] per image.
- colorblock: number of 32 x 32 blocks of a random uniform colour pasted at random positions.
sharpness_contrast
- highsharpen: unsharp-masking amount on L*: L + p (L - G * L), G a Gaussian of sigma 6 cut at 6 pixels.
- lincontrchange: not-a-knot spline tone curve through (0.3, 0.25 - p / 4), (0.5, 0.5), (0.7, 0.75 + p / 4);
  p > 0 raises contrast, p < 0 lowers it, and p = 0 is already a mild contrast boost, not the identity.
- nonlincontrchange: half-width of the output range: [0, 1] is mapped (linearly) onto [0.5 - p, 0.5 + p].

Where "arniqa" departs from MATLAB (what the port does, reproduced on purpose):
- colordiff, colorsat2, brighten, highsharpen convert to CIELAB with the channels reversed (B, G, R read as
  R, G, B) and reverse them back; colordiff and colorsat2 then truncate to 8-bit levels (floor(255 x) / 255).
- colorshift: the 1 %/99 % percentile clip of the edge weight is replaced by what the port's ``perc`` computes
  (per row, one weight becomes 0 and one becomes 1); the shift of green by (dy, dx) pads each axis by the
  other axis' shift before rolling, so where dy > dx (dx > dy) the top rows (left columns) come from the
  bottom (right) of the image.
- jpeg, jpeg2000: 8-bit input by truncation (floor(255 x)), not rounding.
- jitter: each pass pads rows by ceil(max row displacement) and columns by ceil(max column displacement)
  but crops with the two swapped, so the image also moves by their difference (often 1 pixel at
  spreads 0.5 and 1); reads beyond the padding give 0.
- noneccpatch: each patch is copied in place row by row, top to bottom, as a copy between overlapping views
  does: a patch moved down by dy repeats its top dy rows (shifted by dx at each repeat) instead of moving whole.
Colour conversions use kornia's constants (sRGB D65, CIELAB with 7.787 / 0.008856, lab-to-rgb clamping
f(Z) at 0 and RGB to [0, 1]) in both variants.

Random numbers: always drawn on the CPU from the given ``torch.Generator`` and then moved, so a seed gives the
same degradation on every device and dtype up to floating-point rounding. Draws, in order, per call:
motionblur ``torch.randint(0, 181, (N,))`` angles; colorshift ``torch.rand(N, 2)`` directions;
whitenoise, whitenoiseCC, multnoise ``torch.randn(N, 3, H, W)``; impulsenoise ("arniqa")
``torch.randint(0, 3 H W, (N, int(p * 3 H W)))`` flat indices (channel-major), ("kadid") ``torch.rand(N, 3, H, W)``;
jitter 5 x ``torch.randn(N, 2, H, W)`` (column, row displacements); noneccpatch ``torch.rand(N, p, 4)``
(source row, source column, row move, column move); colorblock ``torch.rand(N, p, 5)`` (R, G, B, row, column).
On a GPU the CPU draw is most of the cost of the noise distortions and jitter.

Device: everything runs batched on the input's device except ``jpeg`` and ``jpeg2000``, which go through
Pillow on the CPU (``cpu_only=True``) and come back. Dtypes: float32 and float64 are computed in their own
precision; float16 and bfloat16 are computed in float32 and cast back. Images smaller than a patch
(noneccpatch, colorblock) get patches of the image's size.
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

__all__ = ["DISTORTIONS", "GROUPS", "VARIANTS", "Distortion", "DistortionFunction", "degrade", "random_composition"]

#: ``function(images, parameter, generator) -> images``; images are float (N, 3, H, W), not yet clipped.
DistortionFunction = Callable[[torch.Tensor, float, "torch.Generator | None"], torch.Tensor]

#: The ways of computing the bank: ARNIQA's port (the default, what QualiCLIP was trained on) and MATLAB's.
VARIANTS = ("arniqa", "kadid")

_MATLAB_EPS = 2.220446049250313e-16  # MATLAB's eps, which fspecial('motion') adds in a few places


# --------------------------------------------------------------------------------------------- random numbers


def _uniform(generator: torch.Generator | None, *shape: int) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device="cpu")


def _normal(generator: torch.Generator | None, *shape: int) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device="cpu")


def _like(tensor: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """``tensor`` on the device and in the floating dtype of ``images``."""
    return tensor.to(device=images.device, dtype=images.dtype)


def _to_8bit_floor(images: torch.Tensor) -> torch.Tensor:
    """floor(255 x) / 255: the port's ``torch.trunc(x * 255) / 255`` on values already in [0, 1]."""
    return torch.floor(images.clamp(0.0, 1.0) * 255.0) / 255.0


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
def _disk_kernel(radius: float, matlab: bool) -> torch.Tensor:
    """``fspecial('disk', radius)``: MATLAB's (``matlab=True``) or the ARNIQA port's, for integer radii.

    Each pixel of the edge gets the area of the circle inside it, from the chord between the two points where
    the circle crosses the pixel: ``low`` and ``high`` along the pixel's shorter offset. Where the circle
    leaves the pixel through its outer side MATLAB takes sqrt(r^2 - (far + 1/2)^2) for ``low`` and
    sqrt(r^2 - (far - 1/2)^2) for ``high``; the port takes 0 and sqrt(r^2 - (near - 1/2)^2). (MATLAB's extra
    correction for radii just above a half-integer never applies to integer radii.)
    """
    half = math.ceil(radius - 0.5)
    offsets = np.abs(np.arange(-half, half + 1, dtype=np.float64))
    far = np.maximum(offsets[:, None], offsets[None, :])
    near = np.minimum(offsets[:, None], offsets[None, :])
    r2 = float(radius) ** 2
    if matlab:
        low_outer = np.sqrt(np.clip(r2 - (far + 0.5) ** 2, 0.0, None))
        high_outer = np.sqrt(np.clip(r2 - (far - 0.5) ** 2, 0.0, None))
    else:
        low_outer = np.zeros_like(far)
        high_outer = np.sqrt(np.clip(r2 - (near - 0.5) ** 2, 0.0, None))
    low = np.where(r2 < (far + 0.5) ** 2 + (near - 0.5) ** 2, near - 0.5, low_outer)
    high = np.where(r2 > (far - 0.5) ** 2 + (near + 0.5) ** 2, near + 0.5, high_outer)
    alpha, beta = np.arcsin(np.clip(high / radius, -1, 1)), np.arcsin(np.clip(low / radius, -1, 1))
    # Area under the circle between the chords, minus the part left of the pixel, plus the part below it.
    area = r2 * (0.5 * (alpha - beta) + 0.25 * (np.sin(2 * alpha) - np.sin(2 * beta)))
    area = area - (far - 0.5) * (high - low) + (low - near + 0.5)
    crossed = (r2 < (far + 0.5) ** 2 + (near + 0.5) ** 2) & (r2 > (far - 0.5) ** 2 + (near - 0.5) ** 2)
    crossed |= (near == 0) & (far - 0.5 < radius) & (far + 0.5 >= radius)
    grid = np.where(crossed, area, 0.0) + ((far + 0.5) ** 2 + (near + 0.5) ** 2 < r2)
    grid[half, half] = min(math.pi * r2, math.pi / 2, 1.0)
    return torch.from_numpy(grid / grid.sum())


@functools.lru_cache(maxsize=1024)
def _motion_kernel(length: float, angle: int) -> torch.Tensor:
    """``fspecial('motion', length, angle)``: a line of width 1 (linear fall-off), angle counter-clockwise.

    Built as MATLAB builds it: one quadrant of distances to the line (pixels past the line's end measured
    to the end point), mirrored through the centre, normalised, flipped upside down for angles below 90.
    """
    length = max(1.0, float(length))
    half = (length - 1.0) / 2.0
    phi = (angle % 180) / 180.0 * math.pi
    cos, sin = math.cos(phi), math.sin(phi)
    step = 1 if cos >= 0 else -1
    last_x = int(half * cos + step - length * _MATLAB_EPS)  # int() truncates towards zero, as MATLAB's fix
    last_y = int(half * sin + 1 - length * _MATLAB_EPS)
    x, y = np.meshgrid(np.arange(0, last_x + step, step, dtype=np.float64), np.arange(0, last_y + 1.0))
    across = y * cos - x * sin
    past_end = (np.hypot(x, y) >= half) & (np.abs(across) <= 1)
    short = half - np.abs((x + across * sin) / cos)
    across = np.where(past_end, np.sqrt(across**2 + short**2), across)
    quadrant = np.clip(1 + _MATLAB_EPS - np.abs(across), 0.0, None)
    rows, cols = quadrant.shape
    kernel = np.zeros((2 * rows - 1, 2 * cols - 1))
    kernel[:rows, :cols] = quadrant[::-1, ::-1]
    kernel[rows - 1 :, cols - 1 :] = quadrant
    kernel /= kernel.sum() + _MATLAB_EPS * length * length
    if cos > 0:
        kernel = kernel[::-1]
    return torch.from_numpy(kernel.copy())


def _motion_kernels(length: float, angles: list[int]) -> torch.Tensor:
    """The kernels of ``angles``, zero-padded (centred) to one common odd size."""
    kernels = [_motion_kernel(float(length), int(angle)) for angle in angles]
    size_y = max(k.shape[0] for k in kernels)
    size_x = max(k.shape[1] for k in kernels)
    size = max(size_x, size_y)
    return torch.stack([F.pad(k, ((size - k.shape[1]) // 2,) * 2 + ((size - k.shape[0]) // 2,) * 2) for k in kernels])


# ------------------------------------------------------------------------------------------------ colour spaces

# sRGB (D65) to CIE XYZ and back, with kornia's matrices; XYZ is divided by the D65 white for CIELAB.
_RGB_TO_XYZ = torch.tensor(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]],
    dtype=torch.float64,
)
_XYZ_TO_RGB = torch.tensor(
    [
        [3.2404813432005266, -1.5371515162713185, -0.4985363261688878],
        [-0.9692549499965682, 1.8759900014898907, 0.0415559265582928],
        [0.0556466391351772, -0.2040413383665112, 1.0573110696453443],
    ],
    dtype=torch.float64,
)
_D65_WHITE = torch.tensor([0.95047, 1.0, 1.08883], dtype=torch.float64)[:, None]
_RGB_TO_XYZN = _RGB_TO_XYZ / _D65_WHITE
_XYZN_TO_RGB = _XYZ_TO_RGB * _D65_WHITE.T
_LUMA = torch.tensor([[0.299, 0.587, 0.114]], dtype=torch.float64)
# kornia's Y, Cb, Cr without the 0.5 offsets (they cancel in the round trip) and its (inexact) inverse.
_RGB_TO_YCBCR = torch.stack(
    (_LUMA[0], (torch.tensor([0.0, 0.0, 1.0]) - _LUMA[0]) * 0.564, (torch.tensor([1.0, 0.0, 0.0]) - _LUMA[0]) * 0.713)
)
_YCBCR_TO_RGB = torch.tensor([[1.0, 0.0, 1.403], [1.0, -0.344, -0.714], [1.0, 1.773, 0.0]], dtype=torch.float64)


def _mix(matrix: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Apply a (k, 3) colour matrix to every pixel."""
    return torch.einsum("ij,njhw->nihw", _like(matrix, images), images)


def _rgb_to_lab(images: torch.Tensor) -> torch.Tensor:
    linear = torch.where(images > 0.04045, ((images + 0.055).clamp_min(0.0) / 1.055) ** 2.4, images / 12.92)
    xyz = _mix(_RGB_TO_XYZN, linear)
    f = torch.where(xyz > 0.008856, xyz.clamp_min(0.008856) ** (1.0 / 3.0), 7.787 * xyz + 4.0 / 29.0)
    fx, fy, fz = f.unbind(1)
    return torch.stack((116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)), dim=1)


def _lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Inverse of ``_rgb_to_lab`` as kornia computes it: f(Z) clamped at 0, the result clipped to [0, 1]."""
    lightness, a, b = lab.unbind(1)
    fy = (lightness + 16.0) / 116.0
    f = torch.stack((fy + a / 500.0, fy, (fy - b / 200.0).clamp_min(0.0)), dim=1)
    xyz = torch.where(f > 0.2068966, f**3, (f - 4.0 / 29.0) / 7.787)
    linear = _mix(_XYZN_TO_RGB, xyz)
    rgb = torch.where(linear > 0.0031308, 1.055 * linear.clamp_min(0.0031308) ** (1 / 2.4) - 0.055, 12.92 * linear)
    return rgb.clamp(0.0, 1.0)


def _reversed_channels(function: DistortionFunction) -> DistortionFunction:
    """The port's colour distortions: the channels reversed before (B, G, R read as R, G, B) and after."""

    @functools.wraps(function)
    def reversed_function(images: torch.Tensor, parameter: float, generator: torch.Generator | None) -> torch.Tensor:
        return function(images.flip(1), parameter, generator).flip(1)

    return reversed_function


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
    return _filter(images, _disk_kernel(float(radius), matlab=False))


def _lensblur_kadid(images: torch.Tensor, radius: float, generator: torch.Generator | None) -> torch.Tensor:
    return _filter(images, _disk_kernel(float(radius), matlab=True))


def _motionblur(images: torch.Tensor, length: float, generator: torch.Generator | None) -> torch.Tensor:
    angles = torch.randint(0, 181, (images.shape[0],), generator=generator, device="cpu")
    return _filter_per_image(images, _motion_kernels(length, angles.tolist()))


def _colordiff_rgb(images: torch.Tensor, amount: float, generator: torch.Generator | None) -> torch.Tensor:
    lab = _rgb_to_lab(images)
    chroma = _gaussian_blur(lab[:, 1:], 1.5 * amount + 2.0) * amount
    return _lab_to_rgb(torch.cat((lab[:, :1], chroma), dim=1))


@_reversed_channels
def _colordiff(images: torch.Tensor, amount: float, generator: torch.Generator | None) -> torch.Tensor:
    return _to_8bit_floor(_colordiff_rgb(images, amount, generator))


def _edge_weight(images: torch.Tensor) -> torch.Tensor:
    """Smoothed gradient magnitude of the grey image, stretched to [0, 1] per image: (N, H, W)."""
    grey = F.pad(_mix(_LUMA, images), (1, 1, 1, 1), mode="replicate")
    gx = (grey[..., 1:-1, 2:] - grey[..., 1:-1, :-2]) / 2
    gy = (grey[..., 2:, 1:-1] - grey[..., :-2, 1:-1]) / 2
    edges = _gaussian_blur(torch.sqrt(gx**2 + gy**2), 4.0)[:, 0]
    low, high = edges.amin(dim=(1, 2), keepdim=True), edges.amax(dim=(1, 2), keepdim=True)
    return torch.where(high > low, (edges - low) / (high - low).clamp_min(torch.finfo(edges.dtype).tiny), edges)


def _shift_directions(generator: torch.Generator | None, n: int, amount: float) -> torch.Tensor:
    """(N, 2) whole-pixel shifts of length ~``amount`` along a uniform random direction of the first quadrant."""
    direction = _uniform(generator, n, 2)
    return torch.round(direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-12) * amount).long()


def _blend_green(images: torch.Tensor, weight: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Green read at per-image (N, H) rows and (N, W) columns, blended in with ``weight``."""
    n = images.shape[0]
    green = images[:, 1]
    batch = torch.arange(n, device=images.device)[:, None, None]
    moved = green[batch, rows.to(images.device)[:, :, None], cols.to(images.device)[:, None, :]]
    blended = moved * weight + green * (1.0 - weight)
    return torch.stack((images[:, 0], blended, images[:, 2]), dim=1)


def _colorshift(images: torch.Tensor, amount: float, generator: torch.Generator | None) -> torch.Tensor:
    n, _, h, w = images.shape
    edges = _edge_weight(images)
    # The port's percentile helper returns sort indices, not values: per row, the weight at column
    # rank(e[0]) drops to 0 and the one at column W - 1 - rank(e[0]) rises to 1 (the rest is unchanged).
    rising = torch.argsort(edges, dim=-1, stable=True).to(edges.dtype)
    falling = 1.0 - torch.argsort(1.0 - edges, dim=-1, stable=True).to(edges.dtype)
    weight = torch.maximum(torch.minimum(edges, rising), falling)
    shift = _shift_directions(generator, n, amount)
    dy, dx = shift[:, :1], shift[:, 1:]
    # Rows padded by dx, rolled by dy; columns padded by dy, rolled by dx (the port's pad/roll/crop).
    rows = (torch.remainder(torch.arange(h)[None] + dx - dy, h + 2 * dx) - dx).clamp(0, h - 1)
    cols = (torch.remainder(torch.arange(w)[None] + dy - dx, w + 2 * dy) - dy).clamp(0, w - 1)
    return _blend_green(images, weight, rows, cols)


def _colorshift_kadid(images: torch.Tensor, amount: float, generator: torch.Generator | None) -> torch.Tensor:
    n, _, h, w = images.shape
    # The edge weight with its tails clipped at the 1st and 99th percentiles (MATLAB's perc).
    edges = _edge_weight(images).flatten(1)
    count = edges.shape[1]
    floor = edges.kthvalue(max(1, math.ceil(0.01 * count)), dim=1, keepdim=True).values
    ceiling = edges.kthvalue(max(1, math.ceil(0.99 * count)), dim=1, keepdim=True).values
    weight = torch.minimum(torch.maximum(edges, floor), ceiling).reshape(n, h, w)
    shift = _shift_directions(generator, n, amount)  # (dx, dy), the border replicated
    rows = (torch.arange(h)[None] - shift[:, 1:]).clamp(0, h - 1)
    cols = (torch.arange(w)[None] - shift[:, :1]).clamp(0, w - 1)
    return _blend_green(images, weight, rows, cols)


def _colorsat1(images: torch.Tensor, factor: float, generator: torch.Generator | None) -> torch.Tensor:
    # HSV keeps V = max(R, G, B) and every channel sits at V - S * V * (hue term), so scaling S scales the
    # distance of each channel below the maximum (exactly the HSV round trip, negative factors included,
    # and independent of the channel order, so the port's reversal changes nothing here).
    value = images.amax(dim=1, keepdim=True)
    return value - factor * (value - images)


def _colorsat2_rgb(images: torch.Tensor, factor: float, generator: torch.Generator | None) -> torch.Tensor:
    lab = _rgb_to_lab(images)
    return _lab_to_rgb(torch.cat((lab[:, :1], lab[:, 1:] * factor), dim=1))


@_reversed_channels
def _colorsat2(images: torch.Tensor, factor: float, generator: torch.Generator | None) -> torch.Tensor:
    return _to_8bit_floor(_colorsat2_rgb(images, factor, generator))


def _pillow_round_trip(images: torch.Tensor, rounding: bool, **save_options: object) -> torch.Tensor:
    """Encode and decode every image with Pillow on the CPU (8-bit, as the codecs require)."""
    scaled = images * 255.0
    scaled = scaled.round() if rounding else scaled.floor()
    pixels = scaled.clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    decoded = []
    for array in pixels:
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(array)).save(buffer, **save_options)
        buffer.seek(0)
        with Image.open(buffer) as image:
            decoded.append(np.asarray(image.convert("RGB")))
    restored = torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2)
    return restored.to(device=images.device, dtype=images.dtype) / 255.0


def _jpeg2000_options(images: torch.Tensor, ratio: float) -> dict[str, object]:
    # 8 resolutions as the port asks; OpenJPEG needs every side to be at least 2 ** (resolutions - 1) pixels.
    resolutions = min(8, int(math.log2(min(images.shape[-2:]))) + 1)
    return {
        "format": "JPEG2000",
        "quality_mode": "rates",
        "quality_layers": [float(int(ratio))],
        "num_resolutions": resolutions,
    }


def _jpeg2000(images: torch.Tensor, ratio: float, generator: torch.Generator | None) -> torch.Tensor:
    return _pillow_round_trip(images, False, **_jpeg2000_options(images, ratio))


def _jpeg2000_kadid(images: torch.Tensor, ratio: float, generator: torch.Generator | None) -> torch.Tensor:
    return _pillow_round_trip(images, True, **_jpeg2000_options(images, ratio))


def _jpeg(images: torch.Tensor, quality: float, generator: torch.Generator | None) -> torch.Tensor:
    return _pillow_round_trip(images, False, format="JPEG", quality=int(quality))


def _jpeg_kadid(images: torch.Tensor, quality: float, generator: torch.Generator | None) -> torch.Tensor:
    return _pillow_round_trip(images, True, format="JPEG", quality=int(quality))


def _whitenoise(images: torch.Tensor, variance: float, generator: torch.Generator | None) -> torch.Tensor:
    return images + _like(_normal(generator, *images.shape), images) * math.sqrt(variance)


def _whitenoise_cc(images: torch.Tensor, variance: float, generator: torch.Generator | None) -> torch.Tensor:
    # YCbCr is affine in RGB: noise added in YCbCr reaches RGB through the inverse matrix alone, and the
    # round trip itself is kornia's (its rounded coefficients make it not quite the identity).
    noise = _like(_normal(generator, *images.shape), images) * math.sqrt(variance)
    return _mix(_YCBCR_TO_RGB @ _RGB_TO_YCBCR, images) + _mix(_YCBCR_TO_RGB, noise)


def _impulsenoise(images: torch.Tensor, density: float, generator: torch.Generator | None) -> torch.Tensor:
    n, c, h, w = images.shape
    count = int(density * c * h * w)  # the port's product, in its order
    where = torch.randint(0, c * h * w, (n, count), generator=generator, device="cpu").to(images.device)
    salt = count // 2
    out = images.clone().reshape(n, c * h * w)
    out.scatter_(1, where[:, :salt], 1.0).scatter_(1, where[:, salt:], 0.0)  # pepper wins where both fall
    return out.reshape(n, c, h, w)


def _impulsenoise_kadid(images: torch.Tensor, density: float, generator: torch.Generator | None) -> torch.Tensor:
    draw = _uniform(generator, *images.shape).to(images.device)
    pepper, salt = draw < density / 2, (draw >= density / 2) & (draw < density)
    return images.masked_fill(pepper, 0.0).masked_fill(salt, 1.0)


def _multnoise(images: torch.Tensor, variance: float, generator: torch.Generator | None) -> torch.Tensor:
    return images * (1.0 + _like(_normal(generator, *images.shape), images) * math.sqrt(variance))


def _brighten_rgb(images: torch.Tensor, amount: float, generator: torch.Generator | None) -> torch.Tensor:
    middle = 0.5 + amount / 2
    lab = _rgb_to_lab(images)
    lightness = _quadratic_curve(lab[:, :1] / 100.0, middle) * 100.0
    from_lab = _lab_to_rgb(torch.cat((lightness, lab[:, 1:]), dim=1))
    return (2.0 * _quadratic_curve(images, middle) + from_lab) / 3.0


_brighten = _reversed_channels(_brighten_rgb)


def _darken(images: torch.Tensor, amount: float, generator: torch.Generator | None) -> torch.Tensor:
    return _quadratic_curve(images, 0.5 - amount / 2)


def _meanshift(images: torch.Tensor, shift: float, generator: torch.Generator | None) -> torch.Tensor:
    return images + shift


def _jitter(images: torch.Tensor, spread: float, generator: torch.Generator | None) -> torch.Tensor:
    """Five passes, each reading pixel (r - dr, c - dc) bilinearly, dr and dc drawn per pixel, as the port does.

    The port pads rows by m_r = ceil(max dr) and columns by m_c = ceil(max dc) (border replicated, the
    displacement maps too) but crops the result with the two swapped: when m_r != m_c the pass also moves
    the whole image by m_c - m_r rows and m_r - m_c columns, and reads beyond the padded image come out 0.
    """
    n, _, h, w = images.shape
    rows = torch.arange(h, dtype=torch.long)[None, :, None]
    cols = torch.arange(w, dtype=torch.long)[None, None, :]
    batch = torch.arange(n)[:, None, None]
    out = images
    for _ in range(5):
        shift = _normal(generator, n, 2, h, w) * spread  # channel 0: column displacements, 1: row displacements
        pad_rows = torch.ceil(shift[:, 1].amax(dim=(1, 2)).abs()).long()[:, None, None]
        pad_cols = torch.ceil(shift[:, 0].amax(dim=(1, 2)).abs()).long()[:, None, None]
        at_row = rows + pad_cols - pad_rows  # where each output pixel is computed, in the image's coordinates
        at_col = cols + pad_rows - pad_cols
        index = (batch, at_row.clamp(0, h - 1), at_col.clamp(0, w - 1))
        read_row = at_row - shift[:, 1][index]
        read_col = at_col - shift[:, 0][index]
        # The port's bilinear read returns 0 where both neighbours of a coordinate clamp to one padded pixel.
        outside = (torch.floor(read_row) + pad_rows < 0) | (torch.floor(read_row) + pad_rows >= h + 2 * pad_rows - 1)
        outside |= (torch.floor(read_col) + pad_cols < 0) | (torch.floor(read_col) + pad_cols >= w + 2 * pad_cols - 1)
        grid = torch.stack((read_col * (2.0 / max(w - 1, 1)) - 1.0, read_row * (2.0 / max(h - 1, 1)) - 1.0), dim=-1)
        sampled = F.grid_sample(out, _like(grid, images), mode="bilinear", padding_mode="border", align_corners=True)
        out = sampled.masked_fill(outside.to(images.device)[:, None], 0.0)
    return out


def _jitter_kadid(images: torch.Tensor, spread: float, generator: torch.Generator | None) -> torch.Tensor:
    """Five passes, each reading pixel (r - dr, c - dc) bilinearly, the border replicated, nothing moved."""
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


def _move_patches(images: torch.Tensor, count: float, generator: torch.Generator | None, rowwise: bool) -> torch.Tensor:
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
    i, j = span[:, None], span[None, :]
    for p in range(count):  # sequential: a later patch may copy pixels an earlier one moved
        steps = torch.zeros((), dtype=torch.long, device=images.device)
        if rowwise:
            # Row i of the source was already overwritten by row i - dy of this patch when dy > 0, and so on
            # back: follow that chain while it stays inside the rows and columns this patch has written.
            dy = (to_top[:, p] - top[:, p])[:, None, None]
            dx = (to_left[:, p] - left[:, p])[:, None, None]
            by_rows = torch.where(dy > 0, i // dy.clamp_min(1), 0)
            by_cols = torch.where(
                dx > 0, j // dx.clamp_min(1), torch.where(dx < 0, (size - 1 - j) // (-dx).clamp_min(1), size)
            )
            steps = torch.minimum(by_rows, by_cols)
            rows, cols = top[:, p, None, None] + i - steps * dy, left[:, p, None, None] + j - steps * dx
        else:
            rows, cols = top[:, p, None, None] + i + 0 * j, left[:, p, None, None] + j + 0 * i
        patch = pixels[batch, rows, cols]
        pixels[batch, (to_top[:, p, None] + span)[:, :, None], (to_left[:, p, None] + span)[:, None, :]] = patch
    return out


def _noneccpatch(images: torch.Tensor, count: float, generator: torch.Generator | None) -> torch.Tensor:
    return _move_patches(images, count, generator, rowwise=True)


def _noneccpatch_kadid(images: torch.Tensor, count: float, generator: torch.Generator | None) -> torch.Tensor:
    return _move_patches(images, count, generator, rowwise=False)


def _pixelate(images: torch.Tensor, strength: float, generator: torch.Generator | None) -> torch.Tensor:
    h, w = images.shape[-2:]
    scale = 0.95 - strength**0.6
    small = F.interpolate(images, size=(max(1, int(h * scale)), max(1, int(w * scale))), mode="nearest")
    return F.interpolate(small, size=(h, w), mode="nearest")


def _quantization(images: torch.Tensor, levels: float, generator: torch.Generator | None) -> torch.Tensor:
    levels = int(levels)
    # Bin edges 0, floor(255 k / levels) for k = 1 .. levels - 1, 256; the index counts the edges below 255 x,
    # so exact black is 0 and the bins above it are 1 .. levels.
    edges = [0] + [255 * k // levels for k in range(1, levels)] + [256]
    # 255 x in float32 whatever the dtype, as the port computes it: an 8-bit value k / 255 then lands exactly
    # on k, and a value equal to an edge belongs to the bin below it.
    scaled = (images.to(torch.float32) * 255.0).contiguous()
    index = torch.bucketize(scaled, torch.tensor(edges, dtype=torch.float32, device=images.device)).to(images.dtype)
    low, high = index.amin(dim=(1, 2, 3), keepdim=True), index.amax(dim=(1, 2, 3), keepdim=True)
    return torch.where(high > low, (index - low) / (high - low).clamp_min(1.0), index)


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


def _highsharpen_rgb(images: torch.Tensor, amount: float, generator: torch.Generator | None) -> torch.Tensor:
    lab = _rgb_to_lab(images)
    lightness = lab[:, :1]
    sharpened = lightness + amount * (lightness - _gaussian_blur(lightness, 6.0, radius=6))
    return _lab_to_rgb(torch.cat((sharpened, lab[:, 1:]), dim=1))


_highsharpen = _reversed_channels(_highsharpen_rgb)


def _lincontrchange(images: torch.Tensor, amount: float, generator: torch.Generator | None) -> torch.Tensor:
    return _spline_curve(images, (0.0, 0.3, 0.5, 0.7, 1.0), (0.0, 0.25 - amount / 4, 0.5, 0.75 + amount / 4, 1.0))


def _nonlincontrchange(images: torch.Tensor, half_width: float, generator: torch.Generator | None) -> torch.Tensor:
    return 0.5 + 2.0 * half_width * (images - 0.5)


# ---------------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Distortion:
    """One distortion: its parameter at levels 1..5, whether it has to run on the CPU, and its functions.

    ``function`` is the ARNIQA computation; ``kadid_function`` the MATLAB one where they differ (None: the same).
    """

    name: str
    group: str
    levels: tuple[float, ...]
    function: DistortionFunction
    cpu_only: bool = False
    kadid_function: DistortionFunction | None = None

    def function_for(self, variant: str) -> DistortionFunction:
        """The function that computes this distortion in ``variant`` (one of ``VARIANTS``)."""
        _check_variant(variant)
        return self.kadid_function if variant == "kadid" and self.kadid_function is not None else self.function


_TABLE: tuple[tuple[str, str, tuple[float, ...], DistortionFunction, bool, DistortionFunction | None], ...] = (
    ("gaublur", "blur", (0.1, 0.5, 1, 2, 5), _gaublur, False, None),
    ("lensblur", "blur", (1, 2, 4, 6, 8), _lensblur, False, _lensblur_kadid),
    ("motionblur", "blur", (1, 2, 4, 6, 10), _motionblur, False, None),
    ("colordiff", "color_distortion", (1, 3, 6, 8, 12), _colordiff, False, _colordiff_rgb),
    ("colorshift", "color_distortion", (1, 3, 6, 8, 12), _colorshift, False, _colorshift_kadid),
    ("colorsat1", "color_distortion", (0.4, 0.2, 0.1, 0, -0.4), _colorsat1, False, None),
    ("colorsat2", "color_distortion", (1, 2, 3, 6, 9), _colorsat2, False, _colorsat2_rgb),
    ("jpeg2000", "jpeg", (16, 32, 45, 120, 170), _jpeg2000, True, _jpeg2000_kadid),
    ("jpeg", "jpeg", (43, 36, 24, 7, 4), _jpeg, True, _jpeg_kadid),
    ("whitenoise", "noise", (0.001, 0.002, 0.003, 0.005, 0.01), _whitenoise, False, None),
    ("whitenoiseCC", "noise", (0.0001, 0.0005, 0.001, 0.002, 0.003), _whitenoise_cc, False, None),
    ("impulsenoise", "noise", (0.001, 0.005, 0.01, 0.02, 0.03), _impulsenoise, False, _impulsenoise_kadid),
    ("multnoise", "noise", (0.001, 0.005, 0.01, 0.02, 0.05), _multnoise, False, None),
    ("brighten", "brightness_change", (0.1, 0.2, 0.4, 0.7, 1.1), _brighten, False, _brighten_rgb),
    ("darken", "brightness_change", (0.05, 0.1, 0.2, 0.4, 0.8), _darken, False, None),
    ("meanshift", "brightness_change", (0, 0.08, -0.08, 0.15, -0.15), _meanshift, False, None),
    ("jitter", "spatial_distortion", (0.05, 0.1, 0.2, 0.5, 1), _jitter, False, _jitter_kadid),
    ("noneccpatch", "spatial_distortion", (20, 40, 60, 80, 100), _noneccpatch, False, _noneccpatch_kadid),
    ("pixelate", "spatial_distortion", (0.01, 0.05, 0.1, 0.2, 0.5), _pixelate, False, None),
    ("quantization", "spatial_distortion", (20, 16, 13, 10, 7), _quantization, False, None),
    ("colorblock", "spatial_distortion", (2, 4, 6, 8, 10), _colorblock, False, None),
    ("highsharpen", "sharpness_contrast", (1, 2, 3, 6, 12), _highsharpen, False, _highsharpen_rgb),
    ("lincontrchange", "sharpness_contrast", (0, 0.15, -0.4, 0.3, -0.6), _lincontrchange, False, None),
    ("nonlincontrchange", "sharpness_contrast", (0.4, 0.3, 0.2, 0.1, 0.05), _nonlincontrchange, False, None),
)

#: The 24 distortions, in the order of the KADID table.
DISTORTIONS: dict[str, Distortion] = {
    name: Distortion(name, group, tuple(float(v) for v in levels), function, cpu_only, kadid)
    for name, group, levels, function, cpu_only, kadid in _TABLE
}

#: Group -> names of its distortions; a composition takes at most one distortion per group.
GROUPS: dict[str, tuple[str, ...]] = {}
for _distortion in DISTORTIONS.values():
    GROUPS[_distortion.group] = (*GROUPS.get(_distortion.group, ()), _distortion.name)
del _distortion

NUM_LEVELS = 5


# ------------------------------------------------------------------------------------------------- public API


def _check_variant(variant: object) -> None:
    if not isinstance(variant, str) or variant not in VARIANTS:
        raise ValueError(f"Argument `variant` must be one of {', '.join(map(repr, VARIANTS))}, got {variant!r}")


def _check_generator(generator: torch.Generator | None) -> None:
    if generator is not None and (not isinstance(generator, torch.Generator) or generator.device.type != "cpu"):
        raise ValueError(
            "Argument `generator` must be None or a CPU torch.Generator (random numbers are drawn on the CPU)"
        )


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"Argument `images` must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3 or images.numel() == 0:
        raise ValueError(f"Argument `images` must have shape (N, 3, H, W) with N, H, W >= 1, got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"Argument `images` must be a floating-point tensor in [0, 1], got {images.dtype}")
    low, high = torch.aminmax(images)
    if not (low >= 0 and high <= 1):  # also false for NaN
        raise ValueError(f"Argument `images` must lie in [0, 1], got values in [{low.item():g}, {high.item():g}]")


def degrade(
    images: torch.Tensor,
    name: str,
    level: int,
    generator: torch.Generator | None = None,
    variant: str = "arniqa",
) -> torch.Tensor:
    """Apply one distortion at ``level`` (1 = mildest .. 5 = strongest) to a batch.

    No autograd graph is recorded: these are data, not a differentiable layer.

    Args:
        images: float (N, 3, H, W) in [0, 1], on any device; never modified.
        name: one of ``DISTORTIONS``.
        level: int in 1..5.
        generator: CPU generator for the random choices (noise, angles, positions), drawn per image;
            ``None`` uses torch's global one.
        variant: ``"arniqa"`` (the default: ARNIQA's computation, what QualiCLIP was trained on) or
            ``"kadid"`` (MATLAB's where the two differ; see the module docstring).

    Returns:
        The degraded batch: same shape, dtype and device, clipped to [0, 1], never aliasing the input.

    Raises:
        ValueError: for an unknown name or variant, a level outside 1..5, images that are not a float
            (N, 3, H, W) tensor in [0, 1], or a generator that is not a CPU ``torch.Generator``.

    Examples:
        >>> crops = torch.rand(2, 3, 64, 64)
        >>> degrade(crops, "quantization", 5).unique().numel() <= 8
        True
    """
    if name not in DISTORTIONS:
        raise ValueError(
            f"Argument `name` must be a known distortion, got {name!r}; valid names: {', '.join(DISTORTIONS)}"
        )
    if isinstance(level, bool) or not isinstance(level, numbers.Integral) or not 1 <= level <= NUM_LEVELS:
        raise ValueError(f"Argument `level` must be an int in 1..{NUM_LEVELS}, got {level!r}")
    _check_variant(variant)
    _check_images(images)
    _check_generator(generator)
    distortion = DISTORTIONS[name]
    work = images if images.dtype in (torch.float32, torch.float64) else images.float()
    with torch.no_grad():
        out = distortion.function_for(variant)(work, distortion.levels[int(level) - 1], generator)
    return out.clamp(0.0, 1.0).to(images.dtype)


def random_composition(
    images: torch.Tensor,
    max_distortions: int = 4,
    generator: torch.Generator | None = None,
    level_std: float = 2.5,
    variant: str = "arniqa",
) -> tuple[torch.Tensor, list[tuple[str, int]]]:
    """Degrade a batch with a random chain of distortions, the ARNIQA degradation model.

    Draws 1..``max_distortions`` distinct groups in random order, one distortion per group, and a level for
    each from a half-Gaussian over the level indices (mean at level 1, ``level_std`` in levels), so that mild
    levels dominate; the chain is applied to the whole batch and clipped to [0, 1] after every step.

    Args:
        images: float (N, 3, H, W) in [0, 1].
        max_distortions: int in 1..7 (one distortion per group at most).
        generator: CPU generator for the plan and the distortions; ``None`` uses torch's global one.
        level_std: positive standard deviation of the half-Gaussian, in levels.
        variant: ``"arniqa"`` or ``"kadid"``, as in ``degrade``.

    Returns:
        The degraded batch and the applied ``(name, level)`` list, in order.

    Raises:
        ValueError: for arguments outside the ranges above (and as ``degrade`` does).
    """
    if isinstance(max_distortions, bool) or not isinstance(max_distortions, numbers.Integral):
        raise ValueError(f"Argument `max_distortions` must be an int, got {max_distortions!r}")
    if not 1 <= max_distortions <= len(GROUPS):
        raise ValueError(
            f"Argument `max_distortions` must be in 1..{len(GROUPS)} (one per group), got {max_distortions}"
        )
    if not (isinstance(level_std, numbers.Real) and math.isfinite(level_std) and level_std > 0):
        raise ValueError(f"Argument `level_std` must be a positive finite number, got {level_std!r}")
    _check_variant(variant)
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
        out = degrade(out, name, level, generator, variant)
    return out, plan
