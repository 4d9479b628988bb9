"""The image files a trainer may use (every one readable, checked before any training work), and ImageNet statistics.

Only headers are read here (tens of microseconds a file), so a folder of 140,000 images is checked in
seconds; a file whose pixel data turns out to be broken later is skipped by the engine at that point.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from qualiclip_metric.inputs import collect_image_files
from training.errors import TrainingError

log = logging.getLogger(__name__)

#: Channel statistics that torchvision's ImageNet weights expect inputs normalised with (the baselines' trunks).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: ``fits(width, height)``: whether an image of that size can give the items a dataset makes.
SizeCheck = Callable[[int, int], bool]


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header, after EXIF orientation; raises for unreadable files."""
    from PIL import ExifTags, Image

    with Image.open(path) as image:
        width, height = image.size
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _preview(items: list[tuple[Path, str]]) -> str:
    return "; ".join(f"{path}: {reason}" for path, reason in items[:3]) + (" ..." if len(items) > 3 else "")


def usable_images(
    sources: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    what: str = "data.images",
    fits: SizeCheck | None = None,
    requirement: str = "",
) -> list[Path]:
    """The image files under ``sources`` (folders are searched recursively) that can be read and fit.

    Unreadable files, and with ``fits`` files too small for the dataset's items (``requirement`` says
    what they need), are left out with a count in the log. Raises :class:`TrainingError` naming
    ``what`` for a missing source, no image files, or no usable file at all.
    """
    sources = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    if not sources:
        raise TrainingError(f"{what}: no images given")
    for source in map(Path, sources):
        if not source.exists():
            raise TrainingError(f"{what}: {source} does not exist")
    files = collect_image_files(sources, recursive=True)
    if not files:
        raise TrainingError(f"{what}: no image files in {', '.join(map(str, sources))}")
    usable, unreadable, too_small = [], [], []
    for path in files:
        try:
            width, height = image_size(path)
        except (OSError, ValueError, SyntaxError) as err:  # PIL's errors for missing, foreign and broken files
            unreadable.append((path, str(err) or type(err).__name__))
            continue
        if fits is not None and not fits(width, height):
            too_small.append((path, f"{width} x {height}"))
        else:
            usable.append(path)
    if unreadable:
        log.warning(
            "%s: skipping %d of %d unreadable image files (%s)", what, len(unreadable), len(files), _preview(unreadable)
        )
    if too_small:
        log.warning(
            "%s: skipping %d of %d images that %s (%s)",
            what,
            len(too_small),
            len(files),
            requirement,
            _preview(too_small),
        )
    if not usable:
        reasons = [f"{len(unreadable)} cannot be read"] if unreadable else []
        reasons += [f"{len(too_small)} are too small: items {requirement}"] if too_small else []
        raise TrainingError(
            f"{what}: none of the {len(files)} image files can be used ({', '.join(reasons)}; "
            f"{_preview(unreadable + too_small)})"
        )
    return usable
