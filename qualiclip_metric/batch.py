"""Scoring many files: a reader, a decoder, same-size buckets and the network, with results in input order.

The stages of :func:`score_files`:

1. **Read** (DataLoader worker processes, or this process with ``workers=0``): each file becomes either
   its encoded bytes, for a JPEG that the GPU decodes (see :func:`gpu_jpeg_frame`), or an image decoded
   by :func:`~qualiclip_metric.inputs.load_image` (Pillow) and downscaled to ``max_size``, or an error.
2. **Decode** (CUDA only): JPEG bytes are decoded in batches by nvJPEG (``torchvision.io.decode_jpeg``) on
   a side stream, EXIF orientation is applied and the image downscaled there, while the network runs on
   the compute stream. A batch nvJPEG refuses is decoded file by file, and a file it refuses by Pillow.
3. **Bucket**: images of the same size wait for each other, even when they are not adjacent, up to
   ``buffer_batches * batch_size`` waiting images.
4. **Score**: a full bucket is stacked (into pinned memory and copied on a copy stream when it was
   decoded on the CPU) and scored; the scores come back without stopping the device, and are yielded in
   input order.

A file that cannot be read, decoded or scored becomes a :class:`FileScore` with an ``error``, never an
exception. Pixels decoded by nvJPEG may differ from Pillow's (libjpeg-turbo) by a few levels, mostly
at colour edges (chroma upsampling and IDCT rounding); ``decode="auto"`` therefore decodes on the GPU
only for reduced precisions, whose own score differences are larger (docs/scale.md).
"""

from __future__ import annotations

import functools
import io
import os
import time
import warnings
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

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

Decode = Literal["auto", "cpu", "cuda"]
DECODES: tuple[str, ...] = ("auto", "cpu", "cuda")
#: The stages whose seconds :class:`PipelineStats` records when ``timed``.
STAGES: tuple[str, ...] = ("read", "decode", "copy", "compute", "collect")
#: Batches scored on the device whose scores have not been read back yet, at most.
_IN_FLIGHT = 2
#: Files a reader process hands over at a time (one message instead of one per file).
_READ_CHUNK = 4
_EXIF_ORIENTATION = 0x0112
#: Larger JPEG files are decoded by Pillow (which streams them) rather than read whole for nvJPEG.
_MAX_GPU_JPEG_BYTES = 1 << 26


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
class PipelineStats:
    """What :func:`score_files` did: how each file was decoded and, with ``timed``, where the time went.

    ``timed=True`` makes each stage wait for the device before its clock stops, so that the seconds of
    reading, decoding, copying and computing can be told apart; such a run is slower than an untimed
    one, so measure throughput in a separate, untimed pass.
    """

    timed: bool = False
    #: Files decoded by nvJPEG, and by Pillow (in the readers, or here after nvJPEG refused them).
    gpu_decoded: int = 0
    cpu_decoded: int = 0
    failed: int = 0
    batches: int = 0
    #: Seconds per stage (:data:`STAGES`) when ``timed``: ``read`` waits for the reader processes
    #: (reading files, and decoding those the CPU decodes); ``decode`` is nvJPEG with orientation and
    #: resizing; ``copy`` the host-to-device copies; ``compute`` the network; ``collect`` reading scores back.
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    #: Seconds from the first result asked for to the last (timed or not; includes the caller's own time).
    wall: float = 0.0


@dataclass
class _Item:
    """One file on its way through the stages."""

    index: int
    path: str
    #: Decoded (3, H, W): uint8 where that is exactly what Pillow's decode gives, else float in [0, 1].
    image: Tensor | None = None
    #: The JPEG's bytes, for the GPU decoder, with the coded (height, width) and the EXIF orientation.
    encoded: bytearray | None = None
    frame: tuple[int, int] | None = None
    orientation: int = 1
    size: tuple[int, int] | None = None  # (width, height) as load_image returns it, before max_size
    error: str | None = None


# -- which JPEGs the GPU decodes -------------------------------------------------------------------


def gpu_jpeg_frame(data: bytes | bytearray | memoryview) -> tuple[int, int] | None:
    """(height, width) of a JPEG whose decode by nvJPEG matches libjpeg's up to rounding; None otherwise.

    Conservative on purpose: only 8-bit baseline (or extended sequential) Huffman JPEGs with three
    YCbCr components, full-resolution chroma planes sampled 1x1 and a luma plane sampled 1x1, 2x1,
    1x2 or 2x2, ending with their end-of-image marker. Everything else (progressive, arithmetic or
    lossless coding, grayscale, CMYK or Adobe RGB, 12-bit, trailing data, broken headers) is left to
    Pillow, which decodes it as :func:`~qualiclip_metric.inputs.load_image` always does.
    """
    data = memoryview(data)
    size = len(data)
    if size < 4 or data[0] != 0xFF or data[1] != 0xD8 or data[-2] != 0xFF or data[-1] != 0xD9:
        return None
    position, frame, jfif, adobe_transform = 2, None, False, None
    while True:
        if position >= size or data[position] != 0xFF:
            return None
        while position < size and data[position] == 0xFF:  # fill bytes
            position += 1
        if position + 3 > size:
            return None
        marker = data[position]
        if marker == 0x01:  # TEM: no length
            position += 1
            continue
        if marker in (0x00, 0xD8, 0xD9) or 0xD0 <= marker <= 0xD7:  # nothing that belongs before a scan
            return None
        length = _u16(data[position + 1 : position + 3])
        body = bytes(data[position + 3 : position + 1 + length])
        position += 1 + length
        if length < 2 or position > size:
            return None
        if marker == 0xDA:  # start of scan: the headers are complete
            break
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if marker not in (0xC0, 0xC1) or frame is not None:
                return None
            frame = body
        elif marker == 0xE0 and body.startswith(b"JFIF\x00"):
            jfif = True
        elif marker == 0xEE and body.startswith(b"Adobe"):
            if len(body) < 12:
                return None
            adobe_transform = body[11]
    if frame is None or len(frame) != 6 + 3 * 3:
        return None
    precision, height, width, components = frame[0], _u16(frame[1:3]), _u16(frame[3:5]), frame[5]
    if precision != 8 or components != 3 or height == 0 or width == 0:
        return None
    identifiers = tuple(frame[6 + 3 * i] for i in range(3))
    sampling = tuple(frame[7 + 3 * i] for i in range(3))
    if adobe_transform is not None and adobe_transform != 1:  # Adobe's "RGB" (0) or YCCK
        return None
    if adobe_transform is None and not jfif and identifiers == (82, 71, 66):  # components named R, G, B
        return None
    if sampling[1:] != (0x11, 0x11) or sampling[0] not in (0x11, 0x21, 0x12, 0x22):
        return None
    return height, width


def _u16(two: bytes | memoryview) -> int:
    return int.from_bytes(two, "big")


def _gpu_candidate(index: int, path: str, max_pixels: int | None) -> _Item | None:
    """The file's bytes, if the GPU may decode it; None sends it to Pillow (which also reports its errors)."""
    try:
        with open(path, "rb") as file:
            length = os.fstat(file.fileno()).st_size
            if file.read(2) != b"\xff\xd8" or length > _MAX_GPU_JPEG_BYTES:
                return None  # not a JPEG (or an implausibly large one): Pillow's
            file.seek(0)
            data = bytearray(length)
            if file.readinto(data) != length:
                return None
    except (OSError, MemoryError):
        return None
    frame = gpu_jpeg_frame(data)
    if frame is None:
        return None
    height, width = frame
    if min(height, width) < MIN_IMAGE_SIDE or (max_pixels is not None and height * width > max_pixels):
        return None  # Pillow's path raises the error that names the limit
    from PIL import Image

    try:  # the headers only, as Pillow reads them: its format, mode, size and EXIF orientation
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                if image.format != "JPEG" or image.mode != "RGB" or image.size != (width, height):
                    return None
                orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - anything Pillow finds odd is Pillow's to decode and report
        return None
    orientation = orientation if orientation in range(1, 9) else 1  # exif_transpose ignores other values
    size = (height, width) if orientation >= 5 else (width, height)  # 5 to 8 swap the sides
    return _Item(index, path, encoded=data, frame=frame, orientation=orientation, size=size)


def orient(image: Tensor, orientation: int) -> Tensor:
    """``image`` (..., H, W) as Pillow's ``ImageOps.exif_transpose`` displays EXIF ``orientation`` 1 to 8."""
    if orientation == 2:
        return image.flip(-1)
    if orientation == 3:
        return image.flip(-2, -1)
    if orientation == 4:
        return image.flip(-2)
    if orientation == 5:
        return image.transpose(-2, -1)
    if orientation == 6:
        return image.rot90(-1, dims=(-2, -1))
    if orientation == 7:
        return image.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:
        return image.rot90(1, dims=(-2, -1))
    return image


# -- reading and decoding on the CPU ----------------------------------------------------------------


def _compact(image: Tensor) -> Tensor:
    """uint8 where that reproduces the image exactly (8-bit sources), so it travels and copies 4x smaller.

    The network turns uint8 ``v`` into ``v / 255``, which is what Pillow's 8-bit pixels became here.
    """
    if image.dtype != torch.float32:
        return image
    quantized = (image * 255).round_().clamp_(0, 255).to(torch.uint8)
    return quantized if torch.equal(quantized.float() / 255.0, image) else image


def _decode_on_cpu(
    index: int, path: str, max_size: int | None, max_pixels: int | None, compact: bool, source: object = None
) -> _Item:
    """Pillow's decode (:func:`load_image`), downscaled to ``max_size``; failures become the item's error.

    ``source`` is what :func:`load_image` reads (a file's bytes, a PIL image; default: the file at ``path``);
    ``path`` names the input in its result and errors.
    """
    try:
        image = load_image(path if source is None else source, max_pixels=max_pixels, name=path)
        size = (image.shape[-1], image.shape[-2])
        resized = resize_longer_side(image[None], max_size)[0]
        if compact and resized.shape == image.shape:  # not resized: still Pillow's 8-bit values, maybe
            resized = _compact(resized)
        return _Item(index, path, image=resized, size=size)
    except (ImageLoadError, ValueError, OSError, MemoryError) as err:
        return _Item(index, path, error=str(err) or type(err).__name__)


class _Reader(Dataset):
    """Reads one file per item: JPEG bytes for the GPU decoder where allowed, else a decoded image.

    Failures become items with an error, not exceptions, so a bad file stops nothing.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        max_size: int | None,
        max_pixels: int | None,
        gpu_jpeg: bool,
        compact: bool,
    ) -> None:
        self.paths = [str(p) for p in paths]
        self.max_size = max_size
        self.max_pixels = max_pixels
        self.gpu_jpeg = gpu_jpeg
        self.compact = compact

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> _Item:
        path = self.paths[index]
        if self.gpu_jpeg:
            candidate = _gpu_candidate(index, path, self.max_pixels)
            if candidate is not None:
                return candidate
        return _decode_on_cpu(index, path, self.max_size, self.max_pixels, self.compact)


def _keep(items: list[_Item]) -> list[_Item]:
    """Identity collation at module level, so workers can be spawned as well as forked."""
    return items


# -- the stages -------------------------------------------------------------------------------------


class _Clock:
    """Adds each stage's seconds to the stats when they are timed, waiting for the device first."""

    def __init__(self, stats: PipelineStats | None, device: torch.device) -> None:
        self.stats = stats if stats is not None and stats.timed else None
        self.device = device

    def __call__(self, stage: str, start: float) -> None:
        if self.stats is not None:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.stats.seconds[stage] += time.perf_counter() - start


def _read(loader: Iterable[list[_Item]], clock: _Clock) -> Iterator[_Item]:
    """Stage 1: the readers' items, in input order."""
    items = iter(loader)
    while True:
        start = time.perf_counter()
        chunk = next(items, None)
        clock("read", start)
        if chunk is None:
            return
        yield from chunk


@functools.cache
def _torchvision_decodes_jpeg_on(device: torch.device) -> str | None:
    """None if torchvision decodes JPEGs on ``device``, else why not (checked once per device)."""
    try:
        from PIL import Image

        buffer = io.BytesIO()
        Image.new("RGB", (32, 32), (200, 100, 50)).save(buffer, format="JPEG")
        _decode_jpegs([bytearray(buffer.getvalue())], device)
    except Exception as err:  # noqa: BLE001 - any failure means: decode with Pillow instead
        return f"{type(err).__name__}: {err}"
    return None


def _decode_jpegs(encoded: list[bytearray], device: torch.device) -> list[Tensor]:
    """uint8 (3, H, W) images of JPEG bytes, decoded by torchvision on ``device`` (nvJPEG on CUDA)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    tensors = [torch.frombuffer(data, dtype=torch.uint8) for data in encoded]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's notices about its image API
        decoded = decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)
    return list(decoded)


class _Decoder:
    """Stage 2: JPEG bytes to images in batches, on ``device`` (a side stream on CUDA).

    On CUDA, nvJPEG writes on its own stream into memory allocated on the decode stream; waiting for
    the decode stream before each batch guarantees that no memory it reuses is still read by earlier
    work there, and the images handed on are marked as used by the compute stream.
    """

    def __init__(
        self,
        device: torch.device,
        batch_size: int,
        max_size: int | None,
        max_pixels: int | None,
        compact: bool,
        stats: PipelineStats | None,
        clock: _Clock,
    ) -> None:
        self.device = device
        self.batch_size = batch_size
        self.max_size = max_size
        self.max_pixels = max_pixels
        self.compact = compact
        self.stats = stats
        self.clock = clock
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def __call__(self, items: Iterable[_Item]) -> Iterator[_Item]:
        waiting: list[_Item] = []
        for item in items:
            if item.encoded is None:
                self._count(item, gpu=False)
                yield item
                continue
            waiting.append(item)
            if len(waiting) >= self.batch_size:
                yield from self._decode(waiting)
                waiting = []
        if waiting:
            yield from self._decode(waiting)

    def _count(self, item: _Item, gpu: bool) -> None:
        if self.stats is not None and item.error is None:
            if gpu:
                self.stats.gpu_decoded += 1
            else:
                self.stats.cpu_decoded += 1

    def _decode(self, items: list[_Item]) -> list[_Item]:
        start = time.perf_counter()
        if self.stream is None:
            out = self._decode_batch(items)
        else:
            self.stream.synchronize()
            with torch.cuda.stream(self.stream):
                out = self._decode_batch(items)
            compute = torch.cuda.current_stream(self.device)
            compute.wait_stream(self.stream)
            for item in out:
                if item.image is not None and item.image.device.type == "cuda":
                    item.image.record_stream(compute)
        self.clock("decode", start)
        return out

    def _decode_batch(self, items: list[_Item]) -> list[_Item]:
        encoded = [item.encoded for item in items]
        try:
            images: list[Tensor | None] = list(_decode_jpegs(encoded, self.device))
        except (RuntimeError, ValueError):  # one bad file fails the whole batch: decode them one by one
            images = []
            for data in encoded:
                try:
                    images.append(_decode_jpegs([data], self.device)[0])
                except (RuntimeError, ValueError):
                    images.append(None)
        out = []
        for item, image in zip(items, images, strict=True):
            item.encoded = None  # the bytes are done with
            if image is None or tuple(image.shape) != (3, *item.frame):
                out.append(_decode_on_cpu(item.index, item.path, self.max_size, self.max_pixels, self.compact))
                self._count(out[-1], gpu=False)
                continue
            with torch.no_grad():
                image = orient(image, item.orientation)
                if self.max_size is not None and max(image.shape[-2:]) > self.max_size:
                    try:
                        image = resize_longer_side((image.float() / 255.0)[None], self.max_size)[0]
                    except ValueError as err:
                        out.append(_Item(item.index, item.path, error=str(err)))
                        continue
            item.image = image
            out.append(item)
            self._count(item, gpu=True)
        return out


@dataclass
class _Batch:
    """A batch on its way back from the device."""

    items: list[_Item]
    output: Tensor  # scores (N,) or pair probabilities (N, P), on the CPU once ``ready`` has completed
    ready: torch.cuda.Event | None


class _Scorer:
    """Stage 4: stacks a bucket, copies it to the device, scores it; scores come back without blocking."""

    def __init__(self, model: QualiCLIP, per_pair: bool, stats: PipelineStats | None, clock: _Clock) -> None:
        self.model = model
        self.per_pair = per_pair
        self.stats = stats
        self.clock = clock
        self.device = model.device
        self.copy_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.in_flight: deque[_Batch] = deque()

    def _to_device(self, images: list[Tensor]) -> Tensor:
        if self.copy_stream is None or images[0].device.type == "cuda":
            return torch.stack(images)
        start = time.perf_counter()
        host = torch.empty((len(images), *images[0].shape), dtype=images[0].dtype, pin_memory=True)
        torch.stack(images, out=host)
        with torch.cuda.stream(self.copy_stream):
            batch = host.to(self.device, non_blocking=True)  # the pinned block is kept until the copy is done
        compute = torch.cuda.current_stream(self.device)
        compute.wait_stream(self.copy_stream)
        batch.record_stream(compute)
        self.clock("copy", start)
        return batch

    def submit(self, items: list[_Item]) -> Iterator[FileScore]:
        """Start scoring ``items`` (all of one shape); yields the results that are already back."""
        start = time.perf_counter()
        try:
            batch = self._to_device([item.image for item in items])
            for item in items:
                item.image = None  # the batch holds the pixels now
            start = time.perf_counter()  # the copy has its own clock
            output = score_batch(self.model, batch, per_pair=self.per_pair).float()
            del batch
            ready = None
            if output.device.type == "cuda":
                # The copy runs on the model device's stream, which need not be the current device's (a
                # model on cuda:1, a torchrun rank that never calls set_device): the event goes there too.
                with torch.cuda.device(output.device):
                    host = torch.empty(output.shape, dtype=output.dtype, pin_memory=True)
                    host.copy_(output, non_blocking=True)
                    ready = torch.cuda.Event()
                    ready.record(torch.cuda.current_stream(output.device))
                output = host
        except (RuntimeError, ValueError) as err:  # e.g. out of memory for one huge size
            self.clock("compute", start)
            yield from (self._failed(item, str(err)) for item in items)
            return
        self.clock("compute", start)
        if self.stats is not None:
            self.stats.batches += 1
        self.in_flight.append(_Batch(items, output, ready))
        yield from self.collect(wait=False)

    def collect(self, wait: bool) -> Iterator[FileScore]:
        """Results of the batches that are back; all of them with ``wait``, else all but ``_IN_FLIGHT``."""
        while self.in_flight:
            batch = self.in_flight[0]
            must = wait or len(self.in_flight) > _IN_FLIGHT
            if batch.ready is not None and not must and not batch.ready.query():
                return
            start = time.perf_counter()
            self.in_flight.popleft()
            try:
                if batch.ready is not None:
                    batch.ready.synchronize()
            except RuntimeError as err:  # an error the device reports only now
                yield from (self._failed(item, str(err)) for item in batch.items)
                continue
            finally:
                self.clock("collect", start)
            yield from self._results(batch)

    def _results(self, batch: _Batch) -> Iterator[FileScore]:
        names = self.model.pair_names
        for item, row in zip(batch.items, batch.output, strict=True):
            if not torch.isfinite(row).all():  # overflow in fp16, say: a number that is no score
                yield self._failed(item, f"{item.path}: the score is not finite ({row.tolist()}); try --precision fp32")
                continue
            pairs = dict(zip(names, row.tolist(), strict=True)) if self.per_pair else None
            score = float(row.mean()) if self.per_pair else float(row)
            yield FileScore(item.index, item.path, score, item.size[0], item.size[1], pairs)

    def _failed(self, item: _Item, error: str) -> FileScore:
        if self.stats is not None:
            self.stats.failed += 1
        return FileScore(item.index, item.path, width=item.size[0], height=item.size[1], error=error)


def _bucket_and_score(
    items: Iterable[_Item], scorer: _Scorer, batch_size: int, limit: int, stats: PipelineStats | None
) -> Iterator[FileScore]:
    """Stage 3, then 4: same-size buckets, scored when full, when too many images wait or when the oldest
    waiting image is more than ``limit`` inputs behind the newest; input order out."""
    done: dict[int, FileScore] = {}
    buckets: dict[tuple, list[_Item]] = {}
    buffered = 0
    next_index = 0

    def run(key: tuple) -> None:
        nonlocal buffered
        bucket = buckets.pop(key)
        buffered -= len(bucket)
        for result in scorer.submit(bucket):
            done[result.index] = result

    def ready() -> Iterator[FileScore]:
        nonlocal next_index
        while next_index in done:
            yield done.pop(next_index)
            next_index += 1

    for item in items:
        if item.error is not None:
            if stats is not None:
                stats.failed += 1
            done[item.index] = FileScore(item.index, item.path, error=item.error)
        else:
            image = item.image
            key = (*image.shape, image.dtype, image.device)
            buckets.setdefault(key, []).append(item)
            buffered += 1
            if len(buckets[key]) >= batch_size:
                run(key)
        # Flush the bucket holding the oldest waiting image when too many images wait, or when it waits
        # too long: results leave in input order, so one odd size would otherwise hold back all the others.
        while buckets:
            oldest = min(buckets, key=lambda k: buckets[k][0].index)
            if buffered <= limit and item.index - buckets[oldest][0].index <= limit:
                break
            run(oldest)
        for result in scorer.collect(wait=False):
            done[result.index] = result
        yield from ready()
    for key in sorted(buckets, key=lambda k: buckets[k][0].index):
        run(key)
    for result in scorer.collect(wait=True):
        done[result.index] = result
    yield from ready()


# -- the entry point -------------------------------------------------------------------------------


def resolve_decode(decode: object, model: QualiCLIP) -> str:
    """Where JPEGs are decoded for ``model``: "cpu" (Pillow) or "cuda" (nvJPEG).

    ``"auto"`` decodes on the GPU for a model on CUDA in a reduced precision (bf16, fp16), whose own score
    differences exceed nvJPEG's rounding, and where torchvision can; fp32 and tf32 keep Pillow's pixels,
    so that scores match the official scorer's.

    Raises:
        ValueError: an unknown ``decode``, or ``"cuda"`` for a model that is not on CUDA or where
            torchvision cannot decode JPEGs there.
    """
    if decode not in DECODES:
        raise ValueError(f"Argument `decode` must be one of {DECODES}, but got {decode!r}")
    device = model.device
    if decode == "cpu":
        return "cpu"
    if device.type != "cuda":
        if decode == "cuda":
            raise ValueError(f"Argument `decode` is 'cuda' but the model is on {device}; move it with .to('cuda')")
        return "cpu"
    if decode == "auto" and model.precision not in ("bf16", "fp16"):
        return "cpu"
    problem = _torchvision_decodes_jpeg_on(device)
    if problem is not None:
        if decode == "cuda":
            raise ValueError(f"Argument `decode` is 'cuda' but torchvision cannot decode JPEGs on {device}: {problem}")
        return "cpu"
    return "cuda"


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
    decode: Decode = "auto",
    stats: PipelineStats | None = None,
) -> Iterator[FileScore]:
    """Yield a :class:`FileScore` for every path, in input order.

    The score of each file is the model's score of ``load_image(path)`` (downscaled to ``max_size``);
    see the module's description for the stages. Files that fail are results with an ``error``.

    Args:
        paths: image files.
        model: the scorer; its device, precision and mode (``fast=True``: the fastest on GPUs) apply.
        batch_size: images scored together (same-size images only; 16 to 64 keep a GPU busy).
        workers: reader processes (0 reads and decodes in this process).
        max_size: downscale images whose longer side exceeds this.
        max_pixels: refuse images with more pixels (a decompression-bomb guard; None disables it).
        per_pair: also return each antonym pair's probability (:attr:`FileScore.pairs`).
        buffer_batches: at most about ``buffer_batches * batch_size`` decoded images wait for their
            batch to fill, and none waits while more than that many later inputs are read.
        decode: where JPEGs are decoded: ``"cpu"`` (Pillow, in the readers), ``"cuda"`` (nvJPEG, in
            batches, for the JPEGs :func:`gpu_jpeg_frame` accepts; others by Pillow), or ``"auto"``
            (see :func:`resolve_decode`).
        stats: filled in with decode counts and, when ``stats.timed``, seconds per stage.

    Raises:
        ValueError: a setting out of range, or ``decode="cuda"`` where it cannot run.

    Examples:
        >>> model = QualiCLIP.from_pretrained(device="cuda", precision="bf16", fast=True)  # doctest: +SKIP
        >>> for result in score_files(paths, model, batch_size=64, workers=8):  # doctest: +SKIP
        ...     print(result.path, result.score if result.ok else result.error)
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if workers < 0:
        raise ValueError(f"workers must be at least 0, got {workers}")
    validate_max_size(max_size)
    if max_pixels is not None and max_pixels < MIN_IMAGE_SIDE**2:
        raise ValueError(f"max_pixels must be None or at least {MIN_IMAGE_SIDE**2}, got {max_pixels}")
    where = resolve_decode(decode, model)
    yield from _pipeline(
        paths,
        model,
        batch_size=batch_size,
        workers=workers,
        max_size=max_size,
        max_pixels=max_pixels,
        per_pair=per_pair,
        buffer_batches=buffer_batches,
        jpeg_device=model.device if where == "cuda" else None,
        stats=stats,
    )


def _pipeline(
    paths: Sequence[str | os.PathLike],
    model: QualiCLIP,
    *,
    batch_size: int,
    workers: int,
    max_size: int | None,
    max_pixels: int | None,
    per_pair: bool,
    buffer_batches: int,
    jpeg_device: torch.device | None,
    stats: PipelineStats | None,
) -> Iterator[FileScore]:
    """The stages, wired together; ``jpeg_device`` decodes the JPEGs it may (None: Pillow decodes all)."""
    device = model.device
    compact = workers > 0 or device.type == "cuda"  # uint8 images cross processes and buses 4x smaller
    # About two batches in flight across the readers (at least two chunks each): enough to keep them busy,
    # little enough that decoded images waiting in shared memory stay within a few batches.
    prefetch = max(2, -(-2 * batch_size // (_READ_CHUNK * max(1, workers))))
    loader = DataLoader(
        _Reader(paths, max_size, max_pixels, gpu_jpeg=jpeg_device is not None, compact=compact),
        batch_size=_READ_CHUNK,
        num_workers=workers,
        collate_fn=_keep,
        prefetch_factor=prefetch if workers else None,
        persistent_workers=False,
    )
    clock = _Clock(stats, device)
    items: Iterable[_Item] = _read(loader, clock)
    if jpeg_device is not None:
        items = _Decoder(jpeg_device, batch_size, max_size, max_pixels, compact, stats, clock)(items)
    elif stats is not None:
        items = _counted(items, stats)
    scorer = _Scorer(model, per_pair, stats, clock)
    limit = max(1, buffer_batches) * batch_size
    start = time.perf_counter()
    yield from _bucket_and_score(items, scorer, batch_size, limit, stats)
    if stats is not None:
        stats.wall += time.perf_counter() - start


def _counted(items: Iterable[_Item], stats: PipelineStats) -> Iterator[_Item]:
    for item in items:
        if item.error is None:
            stats.cpu_decoded += 1
        yield item


def score_sources(
    sources: Iterable[tuple[str, str | os.PathLike | bytes | Image.Image]],
    model: QualiCLIP,
    *,
    batch_size: int = 8,
    max_size: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    per_pair: bool = False,
    buffer_batches: int = 4,
) -> Iterator[FileScore]:
    """Score ``(name, source)`` pairs decoded in this process; a :class:`FileScore` for each, in order.

    For inputs that arrive in memory (a file's bytes, a PIL image) or paths an integration hands over one
    batch at a time (Ray Data): each ``source`` is decoded by :func:`~qualiclip_metric.inputs.load_image`
    as :func:`score_files` decodes files, and scored by the same buckets; ``name`` is the result's
    ``path`` and names the input in errors; ``index`` counts the pairs from 0.
    """
    compact = model.device.type == "cuda"
    items = (
        _decode_on_cpu(index, name, max_size, max_pixels, compact, source=source)
        for index, (name, source) in enumerate(sources)
    )
    scorer = _Scorer(model, per_pair, None, _Clock(None, model.device))
    yield from _bucket_and_score(items, scorer, batch_size, max(1, buffer_batches) * batch_size, None)
