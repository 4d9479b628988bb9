"""Turning tensors, PIL images and files into valid (N, 3, H, W) float batches in [0, 1].

All input validation lives here, so every entry point (model, functional API, CLI) reports the
same errors for the same mistakes.
"""

from __future__ import annotations

import contextlib
import glob
import io
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from qualiclip_metric.config import positive_finite
from qualiclip_metric.errors import ImageLoadError

if TYPE_CHECKING:
    from PIL import Image

#: The RN50 trunk halves the resolution five times; a side below 31 pixels leaves no feature map.
MIN_IMAGE_SIDE = 31
#: Default decompression-bomb limit: Pillow's own default (about 89.5 megapixels).
DEFAULT_MAX_PIXELS = 89_478_485
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pnm", ".jfif"}
)

ImageLike = Union[Tensor, "Image.Image", str, os.PathLike]


def validate_data_range(value: object) -> float:
    """``data_range`` as a float, or a clear error for zero, negative, infinite, NaN or non-numbers."""
    return positive_finite("data_range", value)


def validate_temperature(value: object) -> float:
    """The softmax temperature as a float; 0, negative, infinite and NaN values are refused."""
    return positive_finite("temperature", value)


def validate_positive_int(value: object, name: str, *, optional: bool = False) -> Any:
    """``value`` checked to be a positive integer (``bool`` and ``float`` refused), or None with ``optional``.

    The one check of counts and sizes given as arguments, so that every one is refused in the same words.

    Raises:
        ValueError: "Argument `name` must be a positive integer[ or None], but got ...".

    Examples:
        >>> validate_positive_int(3, "splits")
        3
        >>> validate_positive_int(None, "threads", optional=True) is None
        True
    """
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        alternative = " or None" if optional else ""
        raise ValueError(f"Argument `{name}` must be a positive integer{alternative}, but got {value!r}")
    return value


def validate_threads(value: object) -> int | None:
    """A thread count: None (follow ``torch.get_num_threads()``) or a positive integer; 0 is refused."""
    return validate_positive_int(value, "threads", optional=True)


def validate_max_size(value: object) -> int | None:
    """``max_size`` (the longer side to downscale to): None, or an integer of at least the network's minimum."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < MIN_IMAGE_SIDE:
        raise ValueError(
            f"Argument `max_size` must be None or an integer of at least {MIN_IMAGE_SIDE} (the network's minimum "
            f"side), but got {value!r}"
        )
    return value


def _describe(images: Tensor) -> str:
    return f"a {images.dtype} tensor of shape {tuple(images.shape)}"


def as_image_batch(images: Tensor, data_range: float = 1.0, check_range: bool = True) -> Tensor:
    """Validate an image tensor and return it as float (N, 3, H, W), scaled by ``1 / data_range``.

    Accepts (N, C, H, W) or (C, H, W) with C = 1 (expanded to RGB) or 3, floating point in
    [0, data_range] or uint8 in [0, 255]. Gradients flow through the returned tensor.
    ``check_range=False`` lets values outside the range through (losses on network outputs that
    overshoot); NaN and Inf are always refused.
    """
    if not isinstance(images, Tensor):
        raise TypeError(f"expected a torch.Tensor of images, got {type(images).__name__}")
    data_range = validate_data_range(data_range)
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4:
        raise ValueError(f"expected images shaped (N, 3, H, W) or (3, H, W), got {_describe(images)}")
    n, c, h, w = images.shape
    if n == 0:
        raise ValueError(f"expected at least one image, got an empty batch ({_describe(images)})")
    if c not in (1, 3):
        raise ValueError(
            f"expected 1 (grayscale) or 3 (RGB) channels in dimension 1, got {c} ({_describe(images)}); "
            "drop the alpha channel of RGBA images first"
        )
    if min(h, w) < MIN_IMAGE_SIDE:
        raise ValueError(
            f"images must be at least {MIN_IMAGE_SIDE} x {MIN_IMAGE_SIDE} pixels for the RN50 network, "
            f"got {h} x {w} ({_describe(images)})"
        )
    if images.dtype == torch.uint8:
        images = images.float() / 255.0
    elif images.is_floating_point():
        with torch.no_grad():
            finite = torch.isfinite(images).all()
            low, high = torch.aminmax(images)
        if not finite:
            raise ValueError(f"images contain NaN or Inf values ({_describe(images)})")
        tolerance = 1e-6 * data_range
        if check_range and (low < -tolerance or high > data_range + tolerance):
            raise ValueError(
                f"image values must lie in [0, {data_range:g}], got values in [{low.item():.4g}, {high.item():.4g}] "
                f"({_describe(images)}); pass data_range= for other scales"
            )
        if data_range != 1.0:
            images = images / data_range
    else:
        raise ValueError(f"expected a floating point or uint8 tensor, got {_describe(images)}")
    if c == 1:
        images = images.expand(-1, 3, -1, -1)
    return images


def resize_longer_side(images: Tensor, max_size: int | None) -> Tensor:
    """Downscale (N, C, H, W) so the longer side is at most ``max_size`` (bilinear, antialiased).

    Differentiable. Images already small enough are returned unchanged.
    """
    if validate_max_size(max_size) is None:
        return images
    h, w = images.shape[-2:]
    longer = max(h, w)
    if longer <= max_size:
        return images
    scale = max_size / longer
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    if min(size) < MIN_IMAGE_SIDE:
        raise ValueError(
            f"resizing {h} x {w} to a longer side of {max_size} gives {size[0]} x {size[1]}, "
            f"below the {MIN_IMAGE_SIDE}-pixel minimum; use a larger max_size"
        )
    return F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False).clamp(0.0, 1.0)


@contextlib.contextmanager
def _own_pixel_limit() -> Iterator[None]:
    """Switch off Pillow's global bomb check while opening: ``load_image`` checks the header itself.

    Only the header is read inside; our check runs before any pixel is decoded.
    """
    from PIL import Image

    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _pil_to_tensor(image: Image.Image) -> Tensor:
    """Convert any common PIL mode to float RGB in [0, 1].

    Alpha channels are discarded (the colour values are scored as stored, as pyiqa and the
    official demo do). 16-bit and 32-bit integer images are scaled from [0, 65535].
    """
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        array = np.asarray(image).astype(np.float32)
        if array.size and (array.min() < 0 or array.max() > 65535):
            raise ImageLoadError(f"{mode} image has values outside [0, 65535]")
        array = np.repeat(array[..., None] / 65535.0, 3, axis=-1)
    elif mode == "F":
        array = np.asarray(image, dtype=np.float32)
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise ImageLoadError("floating point (mode F) image must hold finite values in [0, 1]")
        array = np.repeat(array[..., None], 3, axis=-1)
    else:
        if mode != "RGB":
            with warnings.catch_warnings():  # palette transparency is alpha too, and is dropped
                warnings.simplefilter("ignore", UserWarning)
                image = image.convert("RGB")  # L, LA, 1, P, PA, RGBA, CMYK, YCbCr, LAB, HSV
        array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)


def load_image(
    source: str | os.PathLike | Image.Image | bytes,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    *,
    name: str | None = None,
) -> Tensor:
    """Read a file, PIL image or encoded file contents as float RGB (3, H, W) in [0, 1], EXIF orientation applied.

    Raises :class:`ImageLoadError` naming the file for missing, non-image, truncated or corrupt files,
    and for images over ``max_pixels`` (a decompression-bomb guard; ``None`` disables it). ``name`` is
    how errors name the image (default: the path, "PIL image" or "image bytes"); give it for bytes read
    from object storage, say, so that an error says which object it was.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    encoded = isinstance(source, (bytes, bytearray, memoryview))
    if name is None:
        name = "PIL image" if isinstance(source, Image.Image) else "image bytes" if encoded else str(source)
    try:
        with _own_pixel_limit():
            if isinstance(source, Image.Image):
                image = source
            elif encoded:  # opened here, inside the pixel-limit guard, as a file would be
                image = Image.open(io.BytesIO(source))
            else:
                path = Path(source)
                if not path.is_file():
                    raise ImageLoadError(f"{name}: no such file" if not path.exists() else f"{name}: not a file")
                image = Image.open(path)
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                raise ImageLoadError(
                    f"{name}: {width} x {height} = {width * height:,} pixels exceeds the limit of {max_pixels:,} "
                    "(decompression-bomb guard); raise max_pixels (--max-pixels) if the file is trusted"
                )
            image.load()
            image = ImageOps.exif_transpose(image)
            tensor = _pil_to_tensor(image)
    except ImageLoadError as err:
        if str(err).startswith(name):
            raise
        raise ImageLoadError(f"{name}: {err}") from err
    except UnidentifiedImageError as err:
        raise ImageLoadError(f"{name}: not a recognised image file") from err
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        reason = str(err) or type(err).__name__
        if "truncated" in reason.lower():
            reason = f"truncated file ({reason})"
        raise ImageLoadError(f"{name}: cannot decode image: {reason}") from err
    if min(tensor.shape[-2:]) < MIN_IMAGE_SIDE:
        raise ImageLoadError(
            f"{name}: {tensor.shape[-1]} x {tensor.shape[-2]} is smaller than the "
            f"{MIN_IMAGE_SIDE} x {MIN_IMAGE_SIDE} minimum of the network"
        )
    return tensor


#: Characters that make a path argument a glob pattern when no file of that name exists.
GLOB_CHARACTERS = ("*", "?", "[")


def read_path_list(source: str | os.PathLike) -> list[str]:
    """The paths listed in a text file, one a line, for lists too long for a command line.

    ``"-"`` reads standard input. Lines are taken as they are (spaces included), without their line ending;
    blank lines and lines that start with ``#`` are skipped. Relative paths are relative to the current
    folder, not to the list's.

    Raises:
        OSError: the file cannot be read.
        ValueError: it is not UTF-8 text.
    """
    try:
        if str(source) == "-":
            text = sys.stdin.buffer.read().decode("utf-8")
        else:
            text = Path(source).read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{source}: a list of paths must be UTF-8 text ({err.reason} at byte {err.start})") from None
    lines = (line.removesuffix("\r") for line in text.split("\n"))
    return [line for line in lines if line.strip() and not line.startswith("#")]


def collect_image_files(
    paths: Sequence[str | os.PathLike], recursive: bool = False, files_from: str | os.PathLike | None = None
) -> list[Path]:
    """The files to score: folders expanded to the image files they contain, glob patterns to what they match.

    Each entry, and each path listed in ``files_from`` (after ``paths``), is taken as a shell would hand it
    over: a file named is kept as is, whatever its extension, and also when it does not exist (scoring it
    reports the error); a folder gives its image files (by extension, sorted; ``recursive`` descends into
    sub-folders). An entry of ``paths`` that does not exist but holds ``*``, ``?`` or ``[`` is a pattern,
    expanded with :func:`glob.glob` (``**`` matches any depth of folders, hidden names are left out) and its
    sorted matches are taken the same way; the lines of ``files_from`` are literal paths, never patterns (a
    list names real files, and a missing ``a/00[12].png`` there must not score ``a/001.png``).

    Args:
        paths: files, folders and patterns.
        recursive: descend into the sub-folders of folders.
        files_from: a list of more paths, one a line (see :func:`read_path_list`; ``"-"`` is standard input).

    Raises:
        ValueError: a pattern matches nothing, or ``files_from`` is not UTF-8 text.
        OSError: ``files_from`` cannot be read.

    Examples:
        >>> collect_image_files(["photos/**/*.jpg", "extra.png"])  # doctest: +SKIP
        [PosixPath('photos/a.jpg'), PosixPath('photos/trip/b.jpg'), PosixPath('extra.png')]
    """
    files: list[Path] = []
    for entry in map(str, paths):
        path = Path(entry)
        if not path.exists() and any(character in entry for character in GLOB_CHARACTERS):
            matches = sorted(glob.glob(entry, recursive=True))
            if not matches:
                raise ValueError(f"no file or folder matches the pattern {entry!r}")
            files.extend(found for match in matches for found in _expand(Path(match), recursive))
        else:
            files.extend(_expand(path, recursive))
    for entry in read_path_list(files_from) if files_from is not None else []:
        files.extend(_expand(Path(entry), recursive))
    return files


def _expand(entry: Path, recursive: bool) -> list[Path]:
    """A folder's image files (sorted), or the file itself."""
    if not entry.is_dir():
        return [entry]
    pattern = entry.rglob("*") if recursive else entry.iterdir()
    return sorted(p for p in pattern if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
