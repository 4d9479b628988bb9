"""Scoring many files: decoding in worker processes, same-size batching, results in input order."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from qualiclip_metric.errors import ImageLoadError
from qualiclip_metric.functional import score_batch
from qualiclip_metric.inputs import (
    DEFAULT_MAX_PIXELS,
    MIN_IMAGE_SIDE,
    load_image,
    resize_longer_side,
    validate_max_size,
)
from qualiclip_metric.model import QualiCLIP

if TYPE_CHECKING:
    from PIL import Image


@dataclass
class FileScore:
    """The outcome for one input file: a score, or the reason it could not be scored."""

    index: int
    path: str
    score: float | None = None
    width: int | None = None
    height: int | None = None
    pairs: dict[str, float] | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Decoded:
    """One input ready for the network (resized to ``max_size``), or the reason it could not be decoded."""

    index: int
    path: str
    image: Tensor | None = None
    size: tuple[int, int] | None = None  # original (width, height)
    error: str | None = None


def decode(
    index: int,
    path: str,
    source: str | os.PathLike | Image.Image | bytes | None = None,
    *,
    max_size: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Decoded:
    """Decode one input with :func:`~qualiclip_metric.inputs.load_image`; a failure is returned, not raised.

    ``source`` is what to decode (default: the file at ``path``): a path, a PIL image or a file's bytes;
    ``path`` names the input in results and errors. Integrations that receive images in memory (Ray Data)
    decode here, so that their images are read exactly as files are.
    """
    try:
        image = load_image(path if source is None else source, max_pixels=max_pixels, name=path)
        size = (image.shape[-1], image.shape[-2])
        return Decoded(index, path, resize_longer_side(image[None], max_size)[0], size)
    except (ImageLoadError, ValueError, OSError, MemoryError) as err:
        return Decoded(index, path, error=str(err) or type(err).__name__)


class _ImageFiles(Dataset):
    """Decodes one file per item; failures become results, not exceptions, so a bad file stops nothing."""

    def __init__(self, paths: Sequence[str | os.PathLike], max_size: int | None, max_pixels: int | None):
        self.paths = [str(p) for p in paths]
        self.max_size = max_size
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Decoded:
        return decode(index, self.paths[index], max_size=self.max_size, max_pixels=self.max_pixels)


def _keep(item: Decoded) -> Decoded:
    """Identity collation at module level, so workers can be spawned as well as forked."""
    return item


def score_files(
    paths: Sequence[str | os.PathLike],
    model: QualiCLIP,
    *,
    batch_size: int = 8,
    workers: int = 0,
    max_size: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    per_pair: bool = False,
    buffer_batches: int = 4,
) -> Iterator[FileScore]:
    """Yield a :class:`FileScore` for every path, in input order.

    Files are decoded by ``workers`` DataLoader processes (0 decodes in this process). Images of
    the same size are batched together even when they are not adjacent; at most about
    ``buffer_batches * batch_size`` decoded images wait in memory for their batch to fill.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if workers < 0:
        raise ValueError(f"workers must be at least 0, got {workers}")
    validate_max_size(max_size)
    if max_pixels is not None and max_pixels < MIN_IMAGE_SIDE**2:
        raise ValueError(f"max_pixels must be None or at least {MIN_IMAGE_SIDE**2}, got {max_pixels}")
    loader = DataLoader(
        _ImageFiles(paths, max_size, max_pixels),
        batch_size=None,
        num_workers=workers,
        pin_memory=model.device.type == "cuda",
        collate_fn=_keep,
        prefetch_factor=2 * batch_size if workers else None,
        persistent_workers=False,
    )
    yield from score_decoded(loader, model, batch_size=batch_size, per_pair=per_pair, buffer_batches=buffer_batches)


def score_decoded(
    items: Iterable[Decoded],
    model: QualiCLIP,
    *,
    batch_size: int = 8,
    per_pair: bool = False,
    buffer_batches: int = 4,
) -> Iterator[FileScore]:
    """Score decoded inputs, indexed 0, 1, 2... in any order, and yield their results in index order.

    The loop behind :func:`score_files`: same-size images are batched together, at most about
    ``buffer_batches * batch_size`` images wait for their batch, and a failure (a decoding error, a
    batch that runs out of memory, a score that is not finite) becomes the result's error.
    """
    done: dict[int, FileScore] = {}
    buckets: dict[tuple[int, int], list[Decoded]] = {}
    buffered = 0
    next_index = 0
    limit = max(1, buffer_batches) * batch_size

    def fail(item: Decoded, error: str) -> None:
        done[item.index] = FileScore(item.index, item.path, width=item.size[0], height=item.size[1], error=error)

    def run(key: tuple[int, int]) -> None:
        nonlocal buffered
        waiting = buckets.pop(key)
        buffered -= len(waiting)
        batch = torch.stack([item.image for item in waiting])
        try:
            output = score_batch(model, batch, per_pair=per_pair).float().cpu()
        except (RuntimeError, ValueError) as err:  # e.g. out of memory for one huge size
            for item in waiting:
                fail(item, str(err))
            return
        for item, row in zip(waiting, output, strict=True):
            if not torch.isfinite(row).all():  # overflow in fp16, say: a number that is no score
                fail(item, f"{item.path}: the score is not finite ({row.tolist()}); try --precision fp32")
                continue
            pairs = dict(zip(model.pair_names, row.tolist(), strict=True)) if per_pair else None
            score = float(row.mean()) if per_pair else float(row)
            done[item.index] = FileScore(item.index, item.path, score, item.size[0], item.size[1], pairs)

    for decoded in items:
        if decoded.error is not None:
            done[decoded.index] = FileScore(decoded.index, decoded.path, error=decoded.error)
        else:
            key = tuple(decoded.image.shape[-2:])
            buckets.setdefault(key, []).append(decoded)
            buffered += 1
            if len(buckets[key]) >= batch_size:
                run(key)
            while buffered > limit:  # flush the bucket holding the oldest waiting image
                run(min(buckets, key=lambda k: buckets[k][0].index))
        while next_index in done:
            yield done.pop(next_index)
            next_index += 1
    for key in sorted(buckets, key=lambda k: buckets[k][0].index):
        run(key)
        while next_index in done:
            yield done.pop(next_index)
            next_index += 1
