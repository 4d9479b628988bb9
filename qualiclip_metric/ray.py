"""QualiCLIP on a Ray cluster: a predictor for ``ray.data.Dataset.map_batches``, and files scored through it.

Each Ray actor loads one model in its constructor and scores the batches Ray gives it. Images are decoded
by :func:`~qualiclip_metric.inputs.load_image` and scored by :func:`qualiclip_metric.batch.score_sources`,
the code behind ``qualiclip score``, so that a file scores the same on a cluster as on one machine. Ray is
imported where it is used: importing this module does not need it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qualiclip_metric.batch import FileScore, score_sources
from qualiclip_metric.errors import ImageLoadError
from qualiclip_metric.inputs import DEFAULT_MAX_PIXELS, MIN_IMAGE_SIDE, validate_max_size, validate_threads
from qualiclip_metric.precision import Precision
from qualiclip_metric.runtimes import Backend

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa
    from PIL import Image

#: The input columns, in the order they are looked for: decoded arrays, encoded file contents, paths.
IMAGE_COLUMN, BYTES_COLUMN, PATH_COLUMN = "image", "bytes", "path"
#: What the predictor adds, besides one column per antonym pair with ``per_pair``.
SCORE_COLUMN, WIDTH_COLUMN, HEIGHT_COLUMN, ERROR_COLUMN = "score", "width", "height", "error"


class ClusterResultError(RuntimeError):
    """The cluster returned a file twice, one that was not asked for, or none for a file (a lost block)."""


def _check_options(batch_size: int | None, max_size: int | None, max_pixels: int | None) -> None:
    """Refuse bad options where they are given, before Ray starts an actor with them."""
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"Argument `batch_size` must be a positive integer or None, but got {batch_size!r}")
    validate_max_size(max_size)
    if max_pixels is not None and (
        isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < MIN_IMAGE_SIDE**2
    ):
        raise ValueError(
            f"Argument `max_pixels` must be None or an integer of at least {MIN_IMAGE_SIDE**2}, but got {max_pixels!r}"
        )


def _image_from_array(array: Any, name: str) -> Image.Image:
    """A decoded image array (what ``ray.data.read_images`` gives) as the PIL image ``load_image`` reads.

    uint8 arrays (H, W), (H, W, 1), (H, W, 3) and (H, W, 4) and 16-bit grayscale (H, W) are accepted; the
    alpha channel is dropped as it is for files.
    """
    import numpy as np
    from PIL import Image

    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    layout_ok = array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4))
    if not layout_ok or not (array.dtype == np.uint8 or (array.dtype == np.uint16 and array.ndim == 2)):
        raise ImageLoadError(
            f"{name}: image arrays must be uint8 shaped (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), or uint16 "
            f"(H, W); got {array.dtype} of shape {array.shape}"
        )
    return Image.fromarray(np.ascontiguousarray(array))


def _as_numpy(batch: Any) -> dict[str, np.ndarray]:
    """Any batch format Ray gives (dict of NumPy arrays, pandas, pyarrow) as a dict of NumPy arrays."""
    if isinstance(batch, dict):
        return batch
    from ray.data.block import BlockAccessor

    return BlockAccessor.for_block(batch).to_batch_format("numpy")


class QualiCLIPPredictor:
    """Scores the rows of a Ray Data batch; a callable class for :meth:`ray.data.Dataset.map_batches`.

    Ray creates one predictor per actor, so each actor loads the model once. Each row is read from the
    first of these columns the batch has: ``image`` (a decoded array, as ``ray.data.read_images``
    gives), ``bytes`` (a file's contents, as ``ray.data.read_binary_files`` gives) or ``path`` (a file
    each worker can open). The batch comes back with ``score``, ``width``, ``height`` (the image's own
    size), one column per antonym pair with ``per_pair`` (named as ``model.pair_names``, as
    ``qualiclip score --per-pair`` names them) and ``error``: null for a scored row, the reason for one
    that could not be read or scored (whose score is null). A bad row never fails the batch.

    Args:
        weights: any source ``QualiCLIP.from_pretrained`` accepts, readable from every node (a registry name
            downloads once per node).
        device: ``"cuda"``, ``"cpu"``, ...; ``None`` or ``"auto"``: CUDA when the actor has a GPU (ask Ray
            for one with ``num_gpus=1``), else the CPU.
        precision: compute precision: ``"fp32"`` (strict), ``"tf32"``, ``"bf16"`` or ``"fp16"``.
        backend: ``"torch"``, ``"openvino"`` or ``"onnxruntime"`` (the last two on the CPU).
        fast: score through the inference-only trunk.
        threads: CPU threads for scoring (default: torch's, which follows the CPUs Ray gives the actor).
        per_pair: add the probability of every antonym pair.
        max_size: downscale images whose longer side exceeds it.
        max_pixels: refuse larger images (a decompression-bomb guard; ``None`` disables it).
        batch_size: images per forward pass, grouped by size within a Ray batch (default: 1 on the CPU,
            where batching is slower, 16 on GPUs; the CLI's defaults). Ray's own ``batch_size`` is the
            number of rows per call.
        keep_inputs: keep the ``image`` and ``bytes`` columns in the output (default: drop them, so that
            written results hold no pixels); every other column is kept.
        options: other keyword arguments of ``from_pretrained`` (``prompts``, ``temperature``,
            ``prompt_learner``, ``revision``, ``cache_dir``, ``local_files_only``, ``compiled``, ``verify``).

    Raises:
        ValueError: an option that cannot apply; raised in the actor when Ray starts it, as are
            ``WeightsNotFoundError`` and ``CheckpointError`` for weights that cannot be loaded there.

    Examples:
        >>> import ray  # doctest: +SKIP
        >>> from qualiclip_metric.ray import QualiCLIPPredictor
        >>> scores = ray.data.read_binary_files("s3://bucket/images/", include_paths=True).map_batches(
        ...     QualiCLIPPredictor,
        ...     fn_constructor_kwargs={"weights": "qualiclip", "device": "cuda"},
        ...     compute=ray.data.ActorPoolStrategy(size=4),
        ...     num_gpus=1,
        ...     batch_size=64,
        ... )  # doctest: +SKIP
        >>> scores.write_parquet("s3://bucket/scores/")  # doctest: +SKIP
    """

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        *,
        device: str | None = None,
        precision: Precision = "fp32",
        backend: Backend = "torch",
        fast: bool = False,
        threads: int | None = None,
        per_pair: bool = False,
        max_size: int | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        batch_size: int | None = None,
        keep_inputs: bool = False,
        **options: Any,
    ) -> None:
        import torch

        from qualiclip_metric.model import QualiCLIP

        _check_options(batch_size, max_size, max_pixels)
        validate_threads(threads)
        if threads is not None:
            torch.set_num_threads(threads)
        if device in (None, "auto"):
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = QualiCLIP.from_pretrained(
            weights, device=device, precision=precision, backend=backend, fast=fast, threads=threads, **options
        )
        self.per_pair = per_pair
        self.max_size = max_size
        self.max_pixels = max_pixels
        self.batch_size = batch_size or (1 if self.model.device.type == "cpu" else 16)
        self.keep_inputs = keep_inputs

    @property
    def columns(self) -> list[str]:
        """The columns added to every batch, in order."""
        pairs = list(self.model.pair_names) if self.per_pair else []
        return [SCORE_COLUMN, WIDTH_COLUMN, HEIGHT_COLUMN, *pairs, ERROR_COLUMN]

    def __call__(self, batch: Any) -> pa.Table:
        """Score one batch (a dict of NumPy arrays, a pandas DataFrame or a pyarrow Table).

        Returns a pyarrow Table: the batch's columns (``image`` and ``bytes`` dropped unless
        ``keep_inputs``), then the columns above with fixed types (float64, int64, string), so that
        every block has the same schema whether or not it holds errors.

        Raises:
            ValueError: the batch has none of the columns ``image``, ``bytes`` and ``path``.
        """
        columns = _as_numpy(batch)
        results: dict[int, FileScore] = {}
        positions: list[int] = []  # the row of each source handed to the scorer

        def sources() -> Iterator[tuple[str, Any]]:
            for index, (name, source, error) in enumerate(self._rows(columns)):
                if error is None:
                    positions.append(index)
                    yield name, source
                else:
                    results[index] = FileScore(index, name, error=error)

        scored = score_sources(
            sources(),
            self.model,
            batch_size=self.batch_size,
            max_size=self.max_size,
            max_pixels=self.max_pixels,
            per_pair=self.per_pair,
        )
        for result in scored:
            result.index = positions[result.index]
            results[result.index] = result
        return self._table(columns, [results[index] for index in sorted(results)])

    def _rows(self, columns: dict[str, np.ndarray]) -> Iterator[tuple[str, Any, str | None]]:
        """(name, what load_image reads, None) for each row, or (name, None, why not); made as the scorer asks."""
        source = next((name for name in (IMAGE_COLUMN, BYTES_COLUMN, PATH_COLUMN) if name in columns), None)
        if source is None:
            raise ValueError(
                f"Argument `batch` must have a column {IMAGE_COLUMN!r}, {BYTES_COLUMN!r} or {PATH_COLUMN!r}, but has "
                f"{sorted(columns)}"
            )
        values = columns[source]
        paths = columns.get(PATH_COLUMN)
        unnamed = {IMAGE_COLUMN: "image array", BYTES_COLUMN: "image bytes"}.get(source, "path")
        for index in range(len(values)):
            value = values[index]
            name = str(paths[index]) if paths is not None and paths[index] is not None else unnamed
            if value is None:
                yield name, None, f"{name}: no {source} in this row"
            elif source == IMAGE_COLUMN:
                try:
                    yield name, _image_from_array(value, name), None
                except ImageLoadError as err:
                    yield name, None, str(err)
            else:
                yield name, bytes(value) if source == BYTES_COLUMN else str(value), None

    def _table(self, columns: dict[str, np.ndarray], results: list[FileScore]) -> pa.Table:
        import pyarrow as pa
        from ray.data.block import BlockAccessor

        ours = self.columns
        dropped = set(ours) | (set() if self.keep_inputs else {IMAGE_COLUMN, BYTES_COLUMN})
        kept = {name: values for name, values in columns.items() if name not in dropped}
        pairs = [name for name in ours if name not in (SCORE_COLUMN, WIDTH_COLUMN, HEIGHT_COLUMN, ERROR_COLUMN)]
        added = {
            SCORE_COLUMN: pa.array([r.score for r in results], pa.float64()),
            WIDTH_COLUMN: pa.array([r.width for r in results], pa.int64()),
            HEIGHT_COLUMN: pa.array([r.height for r in results], pa.int64()),
            **{name: pa.array([(r.pairs or {}).get(name) for r in results], pa.float64()) for name in pairs},
            ERROR_COLUMN: pa.array([r.error for r in results], pa.string()),
        }
        table = pa.table(added)
        if kept:
            inputs = BlockAccessor.batch_to_block(kept)
            if not isinstance(inputs, pa.Table):
                inputs = pa.Table.from_pandas(inputs, preserve_index=False)
            for position, name in enumerate(inputs.column_names):
                table = table.add_column(position, inputs.schema.field(name), inputs.column(name))
        return table


@contextlib.contextmanager
def _ordered_quiet_context() -> Iterator[None]:
    """Datasets created inside keep their rows in order and draw no progress bars (the caller has its own)."""
    from ray.data import DataContext

    context = DataContext.get_current()
    before = (context.execution_options.preserve_order, context.enable_progress_bars)
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    try:
        yield
    finally:
        context.execution_options.preserve_order, context.enable_progress_bars = before


def _file_score(row: dict[str, Any]) -> FileScore:
    fixed = {"index", PATH_COLUMN, SCORE_COLUMN, WIDTH_COLUMN, HEIGHT_COLUMN, ERROR_COLUMN}
    pairs = {name: value for name, value in row.items() if name not in fixed}
    return FileScore(
        row["index"],
        row[PATH_COLUMN],
        row[SCORE_COLUMN],
        row[WIDTH_COLUMN],
        row[HEIGHT_COLUMN],
        pairs or None,
        row[ERROR_COLUMN],
    )


def score_files_with_ray(
    paths: Sequence[str | os.PathLike],
    *,
    address: str | None = None,
    weights: str | os.PathLike | None = None,
    device: str | None = None,
    precision: Precision = "fp32",
    backend: Backend = "torch",
    per_pair: bool = False,
    batch_size: int | None = None,
    max_size: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    actors: int | None = None,
    num_gpus: float | None = None,
    num_cpus: float = 1,
    files_per_task: int = 64,
    **options: Any,
) -> Iterator[FileScore]:
    """Score files on a Ray cluster; yields a :class:`~qualiclip_metric.batch.FileScore` per path, in input order.

    The results are those of :func:`~qualiclip_metric.batch.score_files` (the ``qualiclip score`` of one
    machine): the paths go to the cluster as blocks of ``files_per_task`` (index and path, about 100 bytes
    a file in Ray's object store), a pool of ``actors`` :class:`QualiCLIPPredictor` scores them, and the
    results stream back in input order (Ray keeps the blocks in order, and a buffer keyed by index makes
    sure of it), so the driver holds neither the images nor all the results.

    Args:
        paths: files that every node of the cluster can read (a shared file system).
        address: the cluster to join when this process has not joined one (``ray.init``'s ``address``:
            ``"auto"`` for the cluster this machine belongs to, ``"ray://HOST:10001"``, ``"local"`` for a
            new one on this machine; ``None``: Ray's default). A cluster this call joined, it leaves at the end.
        weights: the model's source (see :class:`QualiCLIPPredictor`).
        device: ``None`` or ``"auto"``: GPUs when the cluster has some, else CPUs; ``"cuda"``: one GPU an
            actor; ``"cpu"``.
        precision: compute precision.
        backend: who computes the scores.
        per_pair: also return the probability of every antonym pair.
        batch_size: images per forward pass (default: 1 on the CPU, 16 on GPUs).
        max_size: downscale images whose longer side exceeds it.
        max_pixels: refuse larger images.
        actors: scoring actors (default: one per GPU of the cluster on GPUs, else one per ``num_cpus`` CPUs).
        num_gpus: GPUs an actor holds (default: 1 on GPUs, 0 on CPUs).
        num_cpus: CPUs an actor holds; torch uses as many threads unless ``threads`` says otherwise.
        files_per_task: files per Ray block and per call of a predictor.
        options: the other keyword arguments of :class:`QualiCLIPPredictor` (``threads``, ``fast``,
            ``prompts``, ``temperature``, ``prompt_learner``, ...).

    Raises:
        ValueError: an option that cannot apply, before any work on the cluster.
        ClusterResultError: (a RuntimeError) the cluster returned a file twice or lost one.

    Examples:
        >>> from qualiclip_metric.ray import score_files_with_ray
        >>> for result in score_files_with_ray(["a.jpg", "b.png"], address="auto"):  # doctest: +SKIP
        ...     print(result.path, result.score, result.error)
    """
    _check_options(batch_size, max_size, max_pixels)
    if isinstance(files_per_task, bool) or not isinstance(files_per_task, int) or files_per_task < 1:
        raise ValueError(f"Argument `files_per_task` must be a positive integer, but got {files_per_task!r}")
    if actors is not None and (isinstance(actors, bool) or not isinstance(actors, int) or actors < 1):
        raise ValueError(f"Argument `actors` must be a positive integer or None, but got {actors!r}")
    if device is not None and device != "auto" and device.startswith("cuda:"):
        raise ValueError(
            f"Argument `device` must not name a GPU on a Ray cluster (Ray gives each actor its GPU: "
            f"use 'cuda'), but got {device!r}"
        )
    names = [str(Path(path)) if isinstance(path, os.PathLike) else str(path) for path in paths]
    if not names:
        return
    import ray

    joined = not ray.is_initialized()
    if joined:
        ray.init(address=address)
    try:
        yield from _score_on_cluster(
            names,
            weights=weights,
            device=device,
            precision=precision,
            backend=backend,
            per_pair=per_pair,
            batch_size=batch_size,
            max_size=max_size,
            max_pixels=max_pixels,
            actors=actors,
            num_gpus=num_gpus,
            num_cpus=num_cpus,
            files_per_task=files_per_task,
            options=options,
        )
    finally:
        if joined:
            ray.shutdown()


def _score_on_cluster(
    names: list[str],
    *,
    device: str | None,
    actors: int | None,
    num_gpus: float | None,
    num_cpus: float,
    files_per_task: int,
    options: dict[str, Any],
    **predictor: Any,
) -> Iterator[FileScore]:
    import pyarrow as pa
    import ray

    resources = ray.cluster_resources()
    if num_gpus is None:
        wants_gpu = device == "cuda" or (device in (None, "auto") and resources.get("GPU", 0) > 0)
        num_gpus = 1 if wants_gpu else 0
    if device in (None, "auto"):
        device = "cuda" if num_gpus else "cpu"
    if actors is None:
        pool = resources.get("GPU", 0) / num_gpus if num_gpus else resources.get("CPU", 1) / max(num_cpus, 1e-9)
        actors = max(1, int(pool))
    blocks = [
        pa.table(
            {
                "index": pa.array(range(start, min(start + files_per_task, len(names))), pa.int64()),
                PATH_COLUMN: pa.array(names[start : start + files_per_task], pa.string()),
            }
        )
        for start in range(0, len(names), files_per_task)
    ]
    with _ordered_quiet_context():
        dataset = ray.data.from_arrow(blocks).map_batches(
            QualiCLIPPredictor,
            fn_constructor_kwargs={**predictor, **options, "device": device},
            batch_size=files_per_task,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=min(actors, len(blocks))),
            num_gpus=num_gpus,
            num_cpus=num_cpus,
        )
        tables = dataset.iter_batches(batch_size=None, batch_format="pyarrow")
        yield from _in_order((_file_score(row) for table in tables for row in table.to_pylist()), len(names))


def _in_order(results: Iterable[FileScore], total: int) -> Iterator[FileScore]:
    """Results in index order 0, 1, ... ``total - 1``; those that come early wait in a buffer for their turn."""
    waiting: dict[int, FileScore] = {}
    next_index = 0
    for result in results:
        if result.index < next_index or result.index in waiting or not 0 <= result.index < total:
            raise ClusterResultError(
                f"the cluster returned file number {result.index} ({result.path}) twice or unasked"
            )
        waiting[result.index] = result
        while next_index in waiting:
            yield waiting.pop(next_index)
            next_index += 1
    if next_index != total:
        raise ClusterResultError(f"the cluster returned no result for file number {next_index} of {total}")
