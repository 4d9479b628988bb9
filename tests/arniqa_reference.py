"""An independent NumPy reading of ARNIQA's distortions, one (3, H, W) float image at a time.

Written from the definitions in ARNIQA's utils/distortions.py and utils/utils_distortions.py (and MATLAB's
fspecial for the kernels), not from training/degradations.py: ``tests/test_degradations.py`` checks single
cells against it and ``benchmarks/bench_degradations.py --psnr`` compares whole PSNR tables.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image
from scipy import interpolate, ndimage

_EPS = np.finfo(np.float64).eps
_RGB2XYZ = np.array([[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]])
_XYZ2RGB = np.array(
    [
        [3.2404813432005266, -1.5371515162713185, -0.4985363261688878],
        [-0.9692549499965682, 1.8759900014898907, 0.0415559265582928],
        [0.0556466391351772, -0.2040413383665112, 1.0573110696453443],
    ]
)
_WHITE = np.array([0.95047, 1.0, 1.08883])[:, None, None]


def ref_rgb2lab(rgb: np.ndarray) -> np.ndarray:
    """kornia.color.rgb_to_lab, in the dtype of ``rgb``."""
    lin = np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = np.tensordot(_RGB2XYZ.astype(rgb.dtype), lin, axes=1) / _WHITE.astype(rgb.dtype)
    f = np.where(xyz > 0.008856, np.cbrt(np.maximum(xyz, 0.008856)), 7.787 * xyz + 4.0 / 29.0)
    return np.stack((116.0 * f[1] - 16.0, 500.0 * (f[0] - f[1]), 200.0 * (f[1] - f[2])))


def ref_lab2rgb(lab: np.ndarray) -> np.ndarray:
    """kornia.color.lab_to_rgb (clip=True), in the dtype of ``lab``."""
    fy = (lab[0] + 16.0) / 116.0
    f = np.stack((lab[1] / 500.0 + fy, fy, np.maximum(fy - lab[2] / 200.0, 0.0)))
    xyz = np.where(f > 0.2068966, f**3, (f - 4.0 / 29.0) / 7.787) * _WHITE.astype(lab.dtype)
    lin = np.tensordot(_XYZ2RGB.astype(lab.dtype), xyz, axes=1)
    rgb = np.where(lin > 0.0031308, 1.055 * np.maximum(lin, 0.0031308) ** (1 / 2.4) - 0.055, 12.92 * lin)
    return np.clip(rgb, 0.0, 1.0)


def ref_gaussian(size: int, sigma: float) -> np.ndarray:
    """fspecial('gaussian', [size size], sigma)."""
    half = (size - 1) / 2
    y, x = np.mgrid[-half : half + 1, -half : half + 1]
    h = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    h[h < _EPS * h.max()] = 0
    return h / h.sum()


def ref_filter(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """filter2D: correlation with the border replicated."""
    return np.stack([ndimage.correlate(channel, kernel, mode="nearest") for channel in image])


def ref_disk(rad: int) -> np.ndarray:
    """The port's fspecial('disk'), pixel by pixel."""
    size = 2 * rad + 1
    grid = np.zeros((size, size))
    r2 = rad * rad
    for i in range(size):
        for j in range(size):
            hi, lo = max(abs(i - rad), abs(j - rad)), min(abs(i - rad), abs(j - rad))
            m1 = lo - 0.5 if r2 < (hi + 0.5) ** 2 + (lo - 0.5) ** 2 else 0.0
            m2 = lo + 0.5 if r2 > (hi - 0.5) ** 2 + (lo + 0.5) ** 2 else math.sqrt(r2 - (lo - 0.5) ** 2)
            on_edge = (r2 < (hi + 0.5) ** 2 + (lo + 0.5) ** 2 and r2 > (hi - 0.5) ** 2 + (lo - 0.5) ** 2) or (
                lo == 0 and hi - 0.5 < rad <= hi + 0.5
            )
            if on_edge:
                a2, a1 = math.asin(m2 / rad), math.asin(m1 / rad)
                grid[i, j] = (
                    r2 * (0.5 * (a2 - a1) + 0.25 * (math.sin(2 * a2) - math.sin(2 * a1)))
                    - (hi - 0.5) * (m2 - m1)
                    + (m1 - lo + 0.5)
                )
            if (hi + 0.5) ** 2 + (lo + 0.5) ** 2 < r2:
                grid[i, j] += 1
    grid[rad, rad] = min(math.pi * r2, math.pi / 2, 1.0)
    return grid / grid.sum()


def ref_motion(length: float, angle: float) -> np.ndarray:
    """fspecial('motion', length, angle), point by point over the half plane."""
    length = max(1.0, length)
    half = (length - 1) / 2
    phi = (angle % 180) / 180 * math.pi
    c, s = math.cos(phi), math.sin(phi)
    xsign = 1 if c >= 0 else -1
    sx = int(half * c + xsign - length * _EPS)
    sy = int(half * s + 1 - length * _EPS)
    xs = list(range(0, sx + xsign, xsign))
    quarter = np.zeros((sy + 1, len(xs)))
    for yi in range(sy + 1):
        for k, xv in enumerate(xs):
            d = yi * c - xv * s
            if math.hypot(xv, yi) >= half and abs(d) <= 1:
                d = math.hypot(d, half - abs((xv + d * s) / c))
            quarter[yi, k] = max(0.0, 1 + _EPS - abs(d))
    rows, cols = quarter.shape
    h = np.zeros((2 * rows - 1, 2 * cols - 1))
    h[:rows, :cols] = np.rot90(quarter, 2)
    h[rows - 1 :, cols - 1 :] = quarter
    h /= h.sum() + _EPS * length * length
    return np.flipud(h) if c > 0 else h


def ref_curve(x: np.ndarray, knots_x: list[float], knots_y: list[float]) -> np.ndarray:
    """curves(): MATLAB spline (not-a-knot; the parabola for 3 points), clipped."""
    if len(knots_x) == 3:
        return np.clip(np.polyval(np.polyfit(knots_x, knots_y, 2), x), 0, 1)
    return np.clip(interpolate.CubicSpline(knots_x, knots_y, bc_type="not-a-knot")(x), 0, 1)


def ref_hsv_saturation(x: np.ndarray, factor: float) -> np.ndarray:
    """kornia rgb_to_hsv, S * factor, hsv_to_rgb."""
    v, mn = x.max(0), x.min(0)
    delta = v - mn
    s = delta / (v + 1e-8)
    d = np.where(delta == 0, 1.0, delta)
    rc, gc, bc = v - x
    candidates = np.stack((bc - gc, rc - bc + 2 * d, gc - rc + 4 * d)) / d
    h = np.take_along_axis(candidates, x.argmax(0)[None], 0)[0] / 6.0 % 1.0
    s = s * factor
    hi = np.floor(h * 6) % 6
    f = (h * 6) % 6 - hi
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = {0: (v, t, p), 1: (q, v, p), 2: (p, v, t), 3: (p, q, v), 4: (t, p, v), 5: (v, p, q)}
    out = np.zeros_like(x)
    for sector, channels in table.items():
        mask = hi == sector
        for ch in range(3):
            out[ch][mask] = channels[ch][mask]
    return out


def ref_codec(x: np.ndarray, **options: object) -> np.ndarray:
    pixels = (x * 255.0).astype(np.uint8)  # truncation, as tensor.byte()
    buffer = io.BytesIO()
    Image.fromarray(pixels.transpose(1, 2, 0)).save(buffer, **options)
    buffer.seek(0)
    with Image.open(buffer) as image:
        return np.asarray(image.convert("RGB")).transpose(2, 0, 1) / 255.0


def ref_bilinear(im: np.ndarray, xq: np.ndarray, yq: np.ndarray) -> np.ndarray:
    """bilinear_interpolate_torch, eps in the denominators included (0 where neighbours clamp together)."""
    x0 = np.floor(xq).astype(int)
    y0 = np.floor(yq).astype(int)
    x1, y1 = np.clip(x0 + 1, 0, im.shape[1] - 1), np.clip(y0 + 1, 0, im.shape[0] - 1)
    x0, y0 = np.clip(x0, 0, im.shape[1] - 1), np.clip(y0, 0, im.shape[0] - 1)
    r1 = im[y0, x0] * (x1 - xq) / (x1 - x0 + 1e-8) + im[y0, x1] * (xq - x0) / (x1 - x0 + 1e-8)
    r2 = im[y1, x0] * (x1 - xq) / (x1 - x0 + 1e-8) + im[y1, x1] * (xq - x0) / (x1 - x0 + 1e-8)
    return r1 * (y1 - yq) / (y1 - y0 + 1e-8) + r2 * (yq - y0) / (y1 - y0 + 1e-8)


def ref_jitter(x: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    y = x
    _, h, w = x.shape
    for _ in range(5):
        shift = rng.standard_normal((2, h, w)) * amount
        sy, sx = shift
        msx, msy = math.ceil(abs(sx.max())), math.ceil(abs(sy.max()))
        padded = np.pad(y, ((0, 0), (msx, msx), (msy, msy)), mode="edge")
        syp = np.pad(sy, ((msx, msx), (msy, msy)), mode="edge")
        sxp = np.pad(sx, ((msx, msx), (msy, msy)), mode="edge")
        rr, cc = np.mgrid[0 : padded.shape[1], 0 : padded.shape[2]]
        z = np.stack([ref_bilinear(channel, cc - syp, rr - sxp) for channel in padded])
        y = z[:, msy : msy + h, msx : msx + w]
    return y


def ref_colorshift(x: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    grey = 0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]
    p = np.pad(grey, 1, mode="edge")
    gx, gy = (p[1:-1, 2:] - p[1:-1, :-2]) / 2, (p[2:, 1:-1] - p[:-2, 1:-1]) / 2
    e = ndimage.correlate(np.sqrt(gx**2 + gy**2), ref_gaussian(17, 4), mode="nearest")
    if e.min() < e.max():
        e = (e - e.min()) / (e.max() - e.min())
    # perc() indexes the (values, indices) pair that torch.sort returns: it yields the indices of a row sort.
    e = np.maximum(np.minimum(e, np.argsort(e, axis=-1, kind="stable")), 1 - np.argsort(1 - e, axis=-1, kind="stable"))
    a = rng.random(2)
    s0, s1 = np.round(a / np.sqrt(np.sum(a**2)) * amount).astype(int)
    g = x[1]
    y = np.pad(g, ((0, 0), (s0, s0)), mode="edge")
    y = np.pad(y, ((s1, s1), (0, 0)), mode="edge")
    y = np.roll(y, (s0, s1), axis=(0, 1))
    y = y[s1 : y.shape[0] - s1, s0 : y.shape[1] - s0]
    out = x.copy()
    out[1] = y * e + g * (1 - e)
    return out


def ref_noneccpatch(x: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    y = x.copy()
    _, h, w = x.shape
    for _ in range(count):
        w_start = round(rng.random() * (w - 32 - 16)) + 16
        h_start = round(rng.random() * (h - 32 - 16)) + 16
        to_w = round((rng.random() - 0.5) * 16 + w_start)
        to_h = round((rng.random() - 0.5) * 16 + h_start)
        for row in range(16):  # the in-place copy between overlapping views goes row by row
            y[:, to_h + row, to_w : to_w + 16] = y[:, h_start + row, w_start : w_start + 16].copy()
    return y


def ref_impulse(x: np.ndarray, d: float, rng: np.random.Generator) -> np.ndarray:
    y = x.copy()
    num = int(d * x.shape[0] * x.shape[1] * x.shape[2])
    coords = np.stack(
        (rng.integers(0, 3, num), rng.integers(0, x.shape[1], num), rng.integers(0, x.shape[2], num)), axis=0
    )
    salt = int(0.5 * num)
    y[tuple(coords[:, :salt])] = 1
    y[tuple(coords[:, salt:])] = 0
    return y


def ref_quantization(x: np.ndarray, levels: int) -> np.ndarray:
    grey = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]) * 255
    _, edges = np.histogram(grey, levels, (0, 255))
    bins = np.array([0] + list(edges[1:levels]) + [256]).astype(int)
    index = np.searchsorted(bins, x.astype(np.float32) * np.float32(255), side="left").astype(float)
    return (index - index.min()) / (index.max() - index.min()) if index.min() < index.max() else index


def ref_colorblock(x: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    y = x.copy()
    _, rows, cols = x.shape
    for _ in range(count):
        colour = rng.random(3)
        top, left = math.floor(rng.random() * (rows - 32)), math.floor(rng.random() * (cols - 32))
        y[:, top : top + 32, left : left + 32] = colour[:, None, None]
    return y


def ref_nearest(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """torch 'nearest': source index floor(i * (in / out)), computed in float32 as torch does."""
    rows, cols = (
        np.minimum(np.floor(np.arange(o, dtype=np.float32) * np.float32(i / o)).astype(int), i - 1)
        for i, o in zip(x.shape[1:], size, strict=True)
    )
    return x[:, rows][:, :, cols]


def arniqa_reference(name: str, x: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """ARNIQA's distortion ``name`` with parameter ``p`` on one (3, H, W) image in [0, 1], clipped.

    The two distortions that truncate to 8 bits after a CIELAB round trip (colordiff, colorsat2) run it in
    float32 as ARNIQA does: at colorsat2's factor 1 the float32 round-off decides which values drop a level.
    """
    bgr = x[::-1]
    if name == "gaublur":
        y = ref_filter(x, ref_gaussian(2 * math.ceil(2 * p) + 1, p))
    elif name == "lensblur":
        y = ref_filter(x, ref_disk(int(p)))
    elif name == "motionblur":
        y = ref_filter(x, ref_motion(p, int(rng.integers(0, 181))))
    elif name == "colordiff":
        lab = ref_rgb2lab(bgr.astype(np.float32))
        sigma = 1.5 * p + 2
        kernel = ref_gaussian(2 * math.ceil(2 * sigma) + 1, sigma)
        lab[1:] = ref_filter(lab[1:], kernel) * p
        y = (np.trunc(ref_lab2rgb(lab) * 255) / 255)[::-1]
    elif name == "colorshift":
        y = ref_colorshift(x, p, rng)
    elif name == "colorsat1":
        y = ref_hsv_saturation(bgr, p)[::-1]
    elif name == "colorsat2":
        lab = ref_rgb2lab(bgr.astype(np.float32))
        lab[1:] *= p
        y = (np.trunc(ref_lab2rgb(lab) * 255) / 255)[::-1]
    elif name == "jpeg2000":
        y = ref_codec(x, format="JPEG2000", quality_mode="rates", quality_layers=[int(p)], num_resolutions=8)
    elif name == "jpeg":
        y = ref_codec(x, format="JPEG", quality=int(p))
    elif name == "whitenoise":
        y = x + rng.standard_normal(x.shape) * math.sqrt(p)
    elif name == "whitenoiseCC":
        luma = 0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]
        ycc = np.stack((luma, (x[2] - luma) * 0.564 + 0.5, (x[0] - luma) * 0.713 + 0.5))
        ycc = ycc + rng.standard_normal(x.shape) * math.sqrt(p)
        cb, cr = ycc[1] - 0.5, ycc[2] - 0.5
        y = np.stack((ycc[0] + 1.403 * cr, ycc[0] - 0.714 * cr - 0.344 * cb, ycc[0] + 1.773 * cb))
    elif name == "impulsenoise":
        y = ref_impulse(x, p, rng)
    elif name == "multnoise":
        y = x + x * rng.standard_normal(x.shape) * math.sqrt(p)
    elif name == "brighten":
        lab = ref_rgb2lab(bgr)
        lab[0] = ref_curve(lab[0] / 100, [0, 0.5, 1], [0, 0.5 + p / 2, 1]) * 100
        y = ((2 * ref_curve(bgr, [0, 0.5, 1], [0, 0.5 + p / 2, 1]) + ref_lab2rgb(lab)) / 3)[::-1]
    elif name == "darken":
        y = ref_curve(x, [0, 0.5, 1], [0, 0.5 - p / 2, 1])
    elif name == "meanshift":
        y = x + p
    elif name == "jitter":
        y = ref_jitter(x, p, rng)
    elif name == "noneccpatch":
        y = ref_noneccpatch(x, int(p), rng)
    elif name == "pixelate":
        z = 0.95 - p**0.6
        small = ref_nearest(x, (int(x.shape[1] * z), int(x.shape[2] * z)))
        y = ref_nearest(small, x.shape[1:])
    elif name == "quantization":
        y = ref_quantization(x, int(p))
    elif name == "colorblock":
        y = ref_colorblock(x, int(p), rng)
    elif name == "highsharpen":
        lab = ref_rgb2lab(bgr)
        sharp = -p * ref_gaussian(13, 6)
        sharp[6, 6] += 1 + p
        lab[0] = ndimage.correlate(lab[0], sharp, mode="nearest")
        y = ref_lab2rgb(lab)[::-1]
    elif name == "lincontrchange":
        y = ref_curve(x, [0, 0.3, 0.5, 0.7, 1], [0, 0.25 - p / 4, 0.5, 0.75 + p / 4, 1])
    elif name == "nonlincontrchange":
        y = np.clip(2 * p * x + 0.5 - p, 0.5 - p, 0.5 + p)
    else:
        raise ValueError(f"Argument `name` must be a known distortion, got {name!r}")
    return np.clip(y, 0.0, 1.0)


#: Distortions that draw random numbers (noise, angles, directions, positions).
RANDOM = (
    "motionblur",
    "colorshift",
    "whitenoise",
    "whitenoiseCC",
    "impulsenoise",
    "multnoise",
    "jitter",
    "noneccpatch",
    "colorblock",
)
