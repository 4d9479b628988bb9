"""The HTML report of scored images: one page to open in a browser, with nothing fetched from the network.

:func:`write_report` turns score rows (as :func:`qualiclip_metric.score_writer.score_row` builds them and
:func:`qualiclip_metric.score_writer.read_scores` reads them) into a page: summary, the worst and best
images, a histogram of scores, with a dataset the scatter against its subjective scores (correlations and
logistic fit from :mod:`qualiclip_metric.evaluation`), and a sortable, filterable, paginated table with
thumbnails, sizes, per-pair bars, quality maps and errors.

The data travel as JSON inside the page (``<script type="application/json">``, every ``<``, ``>`` and
``&`` escaped, so no file name can end the script); the table is drawn by the page's own script from that
array, one page of rows at a time, so the page stays responsive with tens of thousands of images.
Thumbnails (128 px JPEG) are embedded as ``data:`` URIs while they stay below :data:`EMBED_LIMIT` bytes in
all (about 6,000 photographs); beyond, they are written beside the page in ``NAME_files/``.

This module is part of the outer layer (like :mod:`qualiclip_metric.evaluation`): the core never imports it.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import math
import os
import re
import shutil
import statistics
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from qualiclip_metric.inputs import DEFAULT_MAX_PIXELS

if TYPE_CHECKING:
    from qualiclip_metric.datasets import IQADataset

#: Longer side of the thumbnails, in pixels, and their JPEG quality.
THUMBNAIL_SIZE = 128
THUMBNAIL_QUALITY = 70
#: Bytes of ``data:`` URIs (thumbnails and maps, base64) above which ``thumbnails="auto"`` writes them beside the page.
EMBED_LIMIT = 24 * 2**20
#: Images in each of the "worst" and "best" strips.
STRIP_SIZE = 12
THUMBNAIL_MODES = ("auto", "embed", "files")
#: Control points of the quality-map colour scale (viridis), from low to high quality.
MAP_COLOURS = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))


@dataclass
class ReportSummary:
    """What :func:`write_report` wrote: the page, the folder of thumbnails (None when embedded), the counts."""

    path: Path
    files: Path | None
    images: int
    scored: int
    failed: list[dict[str, Any]]
    bytes: int
    #: Rows (by index) whose image gave no thumbnail, and why; their scores and errors are as given.
    no_preview: dict[int, str] = field(default_factory=dict)


@dataclass
class ImageMap:
    """One image's quality map: the window scores of ``QualiCLIP.quality_map`` and the grid they come from."""

    #: (rows, cols) window scores.
    cells: np.ndarray
    #: Size of the image the map was computed on (after any ``max_size``), and the window grid.
    height: int
    width: int
    patch: int = 224
    stride: int = 112

    def pixels(self, height: int, width: int) -> np.ndarray:
        """The map at ``height`` x ``width``: each pixel the mean of the windows covering its place in the image.

        Values come from :func:`qualiclip_metric.quality_map.piecewise_quality_map` (rectangles between
        window borders), sampled at the centre of each output pixel.
        """
        import torch

        from qualiclip_metric.quality_map import piecewise_quality_map

        cells = torch.as_tensor(np.asarray(self.cells, dtype=np.float64))
        row_edges, col_edges, values = piecewise_quality_map(cells, self.height, self.width, self.patch, self.stride)
        rows = np.searchsorted(row_edges, (np.arange(height) + 0.5) * self.height / height, side="right") - 1
        cols = np.searchsorted(col_edges, (np.arange(width) + 0.5) * self.width / width, side="right") - 1
        grid = values.numpy()
        return grid[np.clip(rows, 0, grid.shape[0] - 1)][:, np.clip(cols, 0, grid.shape[1] - 1)]


def thumbnail(
    path: str | os.PathLike,
    size: int = THUMBNAIL_SIZE,
    quality: int = THUMBNAIL_QUALITY,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> bytes:
    """A JPEG of the image at ``path`` whose longer side is at most ``size`` pixels.

    Decoded by :func:`qualiclip_metric.inputs.load_image` (every mode, EXIF orientation), downscaled by
    PIL's antialiased ``Image.thumbnail``: unlike the model's resize it has no minimum side, so a panorama
    of 31 x 400 pixels gets a 10 x 128 preview. ``max_pixels`` is the decoder's guard, as for scoring.

    Raises:
        qualiclip_metric.errors.ImageLoadError: the file cannot be read as an image.
    """
    from PIL import Image

    from qualiclip_metric.inputs import load_image

    pixels = (load_image(path, max_pixels).permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    image = Image.fromarray(pixels)
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


def map_png(values: np.ndarray, low: float, high: float) -> bytes:
    """A 2-d map as a PNG, one pixel per value, coloured from ``low`` to ``high`` along :data:`MAP_COLOURS`."""
    from PIL import Image

    grid = np.asarray(values, dtype=np.float64)
    if grid.ndim != 2 or grid.size == 0:
        raise ValueError(f"Argument `values` must be a non-empty 2-d map, but has shape {grid.shape}")
    span = high - low if high > low else 1.0
    position = np.clip((np.nan_to_num(grid, nan=low) - low) / span, 0.0, 1.0) * (len(MAP_COLOURS) - 1)
    lower = np.minimum(position.astype(int), len(MAP_COLOURS) - 2)
    weight = (position - lower)[..., None]
    colours = np.asarray(MAP_COLOURS, dtype=np.float64)
    rgb = colours[lower] * (1.0 - weight) + colours[lower + 1] * weight
    buffer = io.BytesIO()
    Image.fromarray(rgb.round().astype(np.uint8)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def script_json(data: Any) -> str:
    """``data`` as JSON safe inside a ``<script>`` element: ``<``, ``>``, ``&`` and line separators escaped.

    ASCII only (lone surrogates from undecodable file names stay ``\\udcxx`` escapes); non-finite numbers
    become null. ``json.loads`` of the result gives back ``data``.

    Example:
        >>> script_json({"name": "</script>"})
        '{"name":"\\\\u003c/script\\\\u003e"}'
    """
    from qualiclip_metric.score_writer import finite_or_none

    text = json.dumps(finite_or_none(data), ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _file_url(path: str) -> str | None:
    try:
        return Path(path).resolve().as_uri()
    except (ValueError, OSError):
        return None


def _common_folder(paths: Sequence[str]) -> str:
    """The folder all ``paths`` share, shown once in the header; names in the table are relative to it."""
    folders = [os.path.dirname(os.path.abspath(path)) for path in paths]
    if not folders:
        return ""
    try:
        return os.path.commonpath(folders)
    except ValueError:  # different drives
        return ""


def _relative(path: str, folder: str) -> str:
    absolute = os.path.abspath(path)
    if folder and absolute.startswith(folder.rstrip(os.sep) + os.sep):
        return absolute[len(folder.rstrip(os.sep)) + 1 :]
    return path


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high]."""
    if not high > low:
        return [low]
    raw = (high - low) / max(1, count - 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = min((m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw), default=raw)
    first = math.ceil(low / step - 1e-9) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    return ticks


def _tick_label(value: float, ticks: Sequence[float]) -> str:
    """``value`` with as many decimals as the tick step needs (0.25 needs two, 0.2 one)."""
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else 1.0
    decimals = 0
    while decimals < 6 and abs(step * 10**decimals - round(step * 10**decimals)) > 1e-6:
        decimals += 1
    return f"{value:.{decimals}f}"


def _axes(width: int, height: int, margin: tuple[int, int, int, int], x_range, y_range, x_label: str, y_label: str):
    """SVG axes with ticks; returns the elements and the two mapping functions."""
    top, right, bottom, left = margin
    (x0, x1), (y0, y1) = x_range, y_range
    x_span, y_span = (x1 - x0) or 1.0, (y1 - y0) or 1.0

    def sx(value: float) -> float:
        return left + (value - x0) / x_span * (width - left - right)

    def sy(value: float) -> float:
        return height - bottom - (value - y0) / y_span * (height - top - bottom)

    parts = [
        f'<line class="axis" x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}"/>',
        f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}"/>',
    ]
    x_ticks = _nice_ticks(x0, x1)
    for tick in x_ticks:
        x = sx(tick)
        parts.append(
            f'<line class="tick" x1="{x:.1f}" y1="{height - bottom}" x2="{x:.1f}" y2="{height - bottom + 4}"/>'
        )
        parts.append(
            f'<text x="{x:.1f}" y="{height - bottom + 16}" text-anchor="middle">{_tick_label(tick, x_ticks)}</text>'
        )
    y_ticks = _nice_ticks(y0, y1)
    for tick in y_ticks:
        y = sy(tick)
        parts.append(f'<line class="grid" x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_tick_label(tick, y_ticks)}</text>')
    parts.append(
        f'<text x="{(left + width - right) / 2:.1f}" y="{height - 4}" text-anchor="middle">'
        f"{html.escape(x_label)}</text>"
    )
    parts.append(
        f'<text transform="translate(12 {(top + height - bottom) / 2:.1f}) rotate(-90)" text-anchor="middle">'
        f"{html.escape(y_label)}</text>"
    )
    return parts, sx, sy


def _padded(values: np.ndarray) -> tuple[float, float]:
    low, high = float(values.min()), float(values.max())
    pad = (high - low) * 0.04 or max(abs(low) * 0.01, 1e-3)
    return low - pad, high + pad


def histogram_svg(scores: Sequence[float], bins: int = 24) -> str:
    """An inline SVG histogram of ``scores`` (finite values), each bar titled with its range and count."""
    values = np.asarray([s for s in scores if s is not None and math.isfinite(s)], dtype=np.float64)
    width, height, margin = 420, 250, (12, 12, 40, 48)
    if values.size == 0:
        return '<p class="note">No image was scored.</p>'
    low, high = float(values.min()), float(values.max())
    if high == low:
        low, high = low - 0.005, high + 0.005
    counts, edges = np.histogram(values, bins=bins, range=(low, high))
    parts, sx, sy = _axes(width, height, margin, (low, high), (0, int(counts.max())), "score", "images")
    for count, left, right in zip(counts, edges[:-1], edges[1:], strict=True):
        x, x_end, y = sx(left), sx(right), sy(count)
        parts.append(
            f'<rect class="bar" x="{x + 0.5:.1f}" y="{y:.1f}" width="{max(x_end - x - 1, 0.5):.1f}" '
            f'height="{sy(0) - y:.1f}"><title>{left:.4f} to {right:.4f}: {int(count)} images</title></rect>'
        )
    return (
        f'<svg id="histogram" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="Histogram of {values.size} scores">' + "".join(parts) + "</svg>"
    )


@dataclass
class MOSComparison:
    """Scores against subjective scores: the evaluation report's correlations and the logistic fit."""

    dataset: str
    metrics: dict[str, float]
    points: list[tuple[float, float]]
    logistic: list[float] | None
    higher_is_better: bool
    #: Subjective score of each report row (None where the dataset has none).
    row_mos: list[float | None]
    note: str | None = None


def compare_with_mos(rows: Sequence[Mapping[str, Any]], dataset: IQADataset) -> MOSComparison:
    """Join ``rows`` with ``dataset`` as ``qualiclip evaluate --predictions`` does, and evaluate the scores.

    Rows are matched by :func:`qualiclip_metric.evaluation.match_rows`; correlations come from
    :func:`qualiclip_metric.evaluation.evaluate_predictions` over every matched image (one split, the
    whole set, no bootstrap) and the curve from :func:`qualiclip_metric.evaluation.fit_logistic`. When
    fewer than 3 images can be evaluated, the comparison has no metrics and a ``note`` says why.
    """
    from qualiclip_metric.evaluation import (
        Protocol,
        evaluate_predictions,
        fit_logistic,
        match_rows,
        predictions_from_rows,
    )

    row_mos: list[float | None] = [None] * len(rows)
    for image, index in enumerate(match_rows(rows, dataset)):
        if index is not None:
            row_mos[index] = float(dataset.scores[image])
    predictions, errors = predictions_from_rows(rows, dataset)
    try:
        report = evaluate_predictions(
            dataset, predictions, Protocol(splits=1, test_fraction=1.0, bootstrap=0), errors=errors
        )
    except ValueError as err:
        return MOSComparison(dataset.name, {}, [], None, dataset.higher_is_better, row_mos, note=str(err))
    points = [(entry["score"], entry["mos"]) for entry in report["scores"]]
    sign = 1.0 if dataset.higher_is_better else -1.0
    x, y = np.array([p[0] for p in points]), np.array([p[1] for p in points])
    logistic = [float(value) for value in fit_logistic(x, sign * y)]
    return MOSComparison(dataset.name, report["all_images"], points, logistic, dataset.higher_is_better, row_mos)


def scatter_svg(comparison: MOSComparison) -> str:
    """An inline SVG of score against subjective score with the fitted 4-parameter logistic."""
    from qualiclip_metric.evaluation import logistic4

    if not comparison.points:
        return f'<p class="note">No scatter: {html.escape(comparison.note or "no matched images")}</p>'
    x = np.array([p[0] for p in comparison.points])
    y = np.array([p[1] for p in comparison.points])
    width, height, margin = 420, 250, (12, 12, 40, 54)
    label = "MOS" if comparison.higher_is_better else "DMOS (lower is better)"
    parts, sx, sy = _axes(width, height, margin, _padded(x), _padded(y), "score", label)
    for px, py in comparison.points:
        parts.append(f'<circle class="point" cx="{sx(px):.1f}" cy="{sy(py):.1f}" r="2.6"/>')
    if comparison.logistic is not None:
        sign = 1.0 if comparison.higher_is_better else -1.0
        curve_x = np.linspace(x.min(), x.max(), 120)
        curve_y = sign * logistic4(curve_x, *comparison.logistic)
        points = " ".join(f"{sx(a):.1f},{sy(b):.1f}" for a, b in zip(curve_x, curve_y, strict=True))
        parts.append(f'<polyline class="fit" points="{points}"><title>4-parameter logistic fit</title></polyline>')
    return (
        f'<svg id="scatter" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="Score against {label} for {len(comparison.points)} images">' + "".join(parts) + "</svg>"
    )


def _metrics_table(comparison: MOSComparison) -> str:
    names = {
        "srcc": "SRCC",
        "krcc": "KRCC",
        "plcc": "PLCC",
        "plcc_logistic": "PLCC after logistic fit",
        "rmse_logistic": "RMSE after logistic fit",
    }
    rows = "".join(
        f'<tr><th scope="row">{label}</th><td data-metric="{key}">{comparison.metrics[key]:.4f}</td></tr>'
        for key, label in names.items()
        if key in comparison.metrics
    )
    caption = f"{html.escape(comparison.dataset)}: {len(comparison.points)} images"
    return f'<table id="metrics"><caption>{caption}</caption>{rows}</table>'


def _ramp_css() -> str:
    """The legend's colour ramp, from :data:`MAP_COLOURS`: the colours the maps are drawn with."""
    stops = ", ".join(f"#{red:02x}{green:02x}{blue:02x}" for red, green, blue in MAP_COLOURS)
    return f".legend .ramp {{ background: linear-gradient(90deg, {stops}); }}\n"


def _asset(name: str) -> str:
    return (resources.files("qualiclip_metric") / "report_assets" / name).read_text(encoding="utf-8")


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


def write_report(
    rows: Sequence[Mapping[str, Any]],
    output: str | os.PathLike,
    *,
    pair_names: Sequence[str] = (),
    title: str | None = None,
    source: str = "",
    dataset: IQADataset | None = None,
    maps: Mapping[int, ImageMap] | None = None,
    thumbnails: str = "auto",
    overwrite: bool = False,
    progress: Callable[[], Any] | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> ReportSummary:
    """Write the HTML report of score ``rows`` to ``output``.

    Args:
        rows: one mapping per image with ``path``, ``score``, ``width``, ``height``, ``error`` and a value per
            name in ``pair_names`` (as ``score_row`` builds and ``read_scores`` reads them), in input order.
        output: the page (``.html`` or ``.htm``); written to a temporary file beside it and renamed into place.
        pair_names: the per-pair probability columns to draw as bars.
        title: the page's title (default: the output's file name).
        source: where the scores come from (weights or score file), shown in the header.
        dataset: subjective scores to compare with (see :func:`compare_with_mos`): adds a MOS column, the
            scatter with the logistic fit and the correlations.
        maps: quality maps by row index (see :func:`quality_maps`), drawn at the thumbnail's size and shown
            over it on hover or click, coloured over the range of all maps' windows.
        thumbnails: ``"embed"`` (``data:`` URIs in the page), ``"files"`` (JPEG files in ``NAME_files/`` beside
            the page) or ``"auto"`` (embedded below :data:`EMBED_LIMIT` bytes in all).
        overwrite: replace an existing page (and its ``NAME_files/`` folder); without it they are refused. A
            ``NAME_files/`` holding anything but a report's thumbnails and maps is never replaced.
        progress: called once per image as its thumbnail is made.
        max_pixels: the decoder's guard for the thumbnails (:func:`qualiclip_metric.inputs.load_image`): give
            the one the images were scored with.

    A row without an error whose image cannot be read any more (a score file's path that no longer exists)
    keeps its score; the page shows a placeholder for its thumbnail, and ``no_preview`` says why.

    Returns:
        A :class:`ReportSummary`; ``failed`` holds the rows with an error.

    Raises:
        ValueError: an invalid ``thumbnails`` mode or output suffix.
        FileExistsError: ``output`` or its folder of thumbnails exists and ``overwrite`` is not set.
        qualiclip_metric.score_writer.OutputError: the page cannot be written; nothing existing is replaced.

    Example:
        >>> table = read_scores("scores.csv")  # doctest: +SKIP
        >>> write_report(table.rows, "report.html", pair_names=table.pair_names)  # doctest: +SKIP
    """
    from PIL import Image

    from qualiclip_metric import __version__
    from qualiclip_metric.checkpoint import staged_folder
    from qualiclip_metric.errors import ImageLoadError
    from qualiclip_metric.score_writer import write_text_atomically

    output = Path(output)
    check_report_output(output, overwrite=overwrite)
    if thumbnails not in THUMBNAIL_MODES:
        raise ValueError(f"Argument `thumbnails` must be one of {', '.join(THUMBNAIL_MODES)}, but got {thumbnails!r}")
    folder = output.with_name(output.stem + "_files")
    rows = [dict(row) for row in rows]
    images: dict[str, bytes] = {}
    thumbs: list[str | None] = [None] * len(rows)
    sizes: list[tuple[int, int] | None] = [None] * len(rows)
    previews: dict[int, str] = {}  # rows without a thumbnail, and why: their scores stay as they are
    made: dict[str, int] = {}  # a file listed twice is read once and shares its thumbnail
    for index, row in enumerate(rows):
        first = made.get(str(row["path"]))
        if row.get("error") is None and first is not None:
            thumbs[index], sizes[index] = thumbs[first], sizes[first]
        elif row.get("error") is None:
            try:
                data = thumbnail(row["path"], max_pixels=max_pixels)
            except (ImageLoadError, OSError, ValueError) as err:
                previews[index] = str(err)
            else:
                name = f"t{index:06d}.jpg"
                images[name], thumbs[index] = data, name
                sizes[index] = Image.open(io.BytesIO(data)).size
                made[str(row["path"])] = index
        if progress is not None:
            progress()
    map_names: dict[int, str] = {}
    map_range = None
    maps = {index: found for index, found in (maps or {}).items() if sizes[index] is not None}
    if maps:
        values = np.concatenate([np.asarray(found.cells, dtype=np.float64).ravel() for found in maps.values()])
        values = values[np.isfinite(values)]
        if values.size:
            map_range = (float(np.percentile(values, 2)), float(np.percentile(values, 98)))
            if map_range[1] <= map_range[0]:
                map_range = (float(values.min()), float(values.max()))
            for index, found in maps.items():
                name = f"m{index:06d}.png"
                width, height = sizes[index]
                images[name] = map_png(found.pixels(height, width), *map_range)
                map_names[index] = name
    # What the page would hold: base64 takes 4 bytes for every 3.
    embedded = sum(4 * math.ceil(len(images[name]) / 3) for name in [*thumbs, *map_names.values()] if name is not None)
    embed = thumbnails == "embed" or (thumbnails == "auto" and embedded <= EMBED_LIMIT)

    def source_of(name: str | None) -> str | None:
        if name is None:
            return None
        if embed:
            kind = "image/jpeg" if name.endswith(".jpg") else "image/png"
            return f"data:{kind};base64,{base64.b64encode(images[name]).decode('ascii')}"
        return f"{urllib.parse.quote(folder.name)}/{name}"

    comparison = compare_with_mos(rows, dataset) if dataset is not None else None
    paths = [str(row["path"]) for row in rows]
    common = _common_folder(paths)
    entries = []
    for index, row in enumerate(rows):
        score = row.get("score")
        entry = {
            "i": index,
            "p": paths[index],
            "r": _relative(paths[index], common),
            "s": score if score is not None and math.isfinite(score) else None,
            "w": row.get("width"),
            "h": row.get("height"),
            "q": [_rounded(row.get(name), 4) for name in pair_names] if pair_names else None,
            "e": row.get("error"),
            "u": _file_url(paths[index]),
            "t": source_of(thumbs[index]),
            "ts": sizes[index],
            "k": source_of(map_names.get(index)),
            "m": comparison.row_mos[index] if comparison is not None else None,
        }
        if index in previews:
            entry["te"] = previews[index]
        if index in maps:
            entry["kc"] = list(np.asarray(maps[index].cells).shape)
        entries.append(entry)
    scored = [entry["s"] for entry in entries if entry["e"] is None and entry["s"] is not None]
    failed = [row for row in rows if row.get("error") is not None]
    title = title or output.name
    data = {
        "title": title,
        "pairs": list(pair_names),
        "rows": entries,
        "strip": STRIP_SIZE,
        "mos": comparison is not None,
        "mapRange": map_range,
    }
    summary_parts = [f"{len(rows)} images", f"{len(scored)} scored", f"{len(failed)} failed"]
    if scored:
        summary_parts += [f"mean score {statistics.fmean(scored):.4f}", f"median {statistics.median(scored):.4f}"]
    generated = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    details = []
    if source:
        details.append(f"scores: {html.escape(source)}")
    if common:
        details.append(f"folder: {html.escape(common)}")
    details.append(f"generated {html.escape(generated)} by qualiclip-metric {html.escape(__version__)}")
    charts = [f"<figure><figcaption>Scores of {len(scored)} images</figcaption>{histogram_svg(scored)}</figure>"]
    if comparison is not None:
        charts.append(
            f"<figure><figcaption>Score against subjective score ({html.escape(comparison.dataset)})</figcaption>"
            f"{scatter_svg(comparison)}</figure>"
        )
        if comparison.metrics:
            charts.append(f"<figure><figcaption>Agreement</figcaption>{_metrics_table(comparison)}</figure>")
    if map_range is not None:
        charts.append(
            '<figure id="map-legend"><figcaption>Quality maps: each pixel the mean score of the '
            f"{next(iter(maps.values())).patch}-pixel windows over it</figcaption>"
            f'<div class="legend"><span>{map_range[0]:.3f}</span><span class="ramp"></span>'
            f'<span>{map_range[1]:.3f}</span></div><p class="note">Hover over or click a thumbnail to see its map '
            "(colours from the 2nd to the 98th percentile of all windows).</p></figure>"
        )
    page = _asset("report.html")
    for key, value in {
        "TITLE": html.escape(title),
        "STYLE": _asset("report.css") + _ramp_css(),
        "SUMMARY": " · ".join(summary_parts),
        "DETAILS": " · ".join(details),
        "CHARTS": "".join(charts),
        "DATA": script_json(data),
        "SCRIPT": _asset("report.js"),
    }.items():
        page = page.replace(f"<!--QUALICLIP:{key}-->", value)
    files = None
    if not embed:
        _check_report_folder(folder)  # again: it may have been filled since the check before any work
        with staged_folder(folder, overwrite=overwrite) as staging:
            for name, content in images.items():
                (staging / name).write_bytes(content)
        files = folder
    write_text_atomically(output, page)
    if embed and overwrite and folder.is_dir():  # the replaced page's thumbnails
        _check_report_folder(folder)
        shutil.rmtree(folder)
    return ReportSummary(output, files, len(rows), len(scored), failed, len(page.encode("utf-8")), previews)


REPORT_SUFFIXES = (".html", ".htm")


def locate_rows(rows: Sequence[Mapping[str, Any]], folder: str | os.PathLike) -> list[dict[str, Any]]:
    """``rows`` with each relative path that does not exist from the working folder taken from ``folder``.

    A score file written with relative paths is then read from anywhere: ``folder`` is the score file's.
    Paths that exist as given, absolute paths and paths found in neither place are kept as they are.

    Example:
        >>> locate_rows([{"path": "a.png"}], "/scores")[0]["path"]  # doctest: +SKIP
        '/scores/a.png'
    """
    located = []
    for row in rows:
        row = dict(row)
        path = Path(str(row["path"]))
        if not path.is_absolute() and not os.path.lexists(path) and os.path.lexists(Path(folder) / path):
            row["path"] = str(Path(folder) / path)
        located.append(row)
    return located


def check_report_output(output: str | os.PathLike, *, overwrite: bool = False) -> None:
    """Refuse, before any work, a page that would replace a file without ``overwrite`` or cannot be written.

    Raises:
        ValueError: a suffix other than ``.html`` or ``.htm``.
        FileExistsError: the page or its ``NAME_files/`` folder exists and ``overwrite`` is not set.
        qualiclip_metric.score_writer.OutputError: a missing or read-only folder, or a directory in its place;
            a ``NAME_files/`` that holds anything but a report's thumbnails and maps (even with ``overwrite``).
    """
    from qualiclip_metric.score_writer import check_writable

    output = Path(output)
    if output.suffix.lower() not in REPORT_SUFFIXES:
        raise ValueError(f"Argument `output` must end in .html or .htm, but got {output}")
    check_writable(output)
    folder = output.with_name(output.stem + "_files")
    if not overwrite:
        for existing in (output, folder):
            if existing.exists():
                error = FileExistsError(f"{existing} already exists; pass overwrite=True to replace it")
                error.filename = str(existing)
                raise error
    _check_report_folder(folder)


#: The names of the files a report writes into its ``NAME_files/`` folder: thumbnails and quality maps.
REPORT_FILE_NAME = re.compile(r"(t\d{6}\.jpg|m\d{6}\.png)")


def _check_report_folder(folder: Path) -> None:
    """Refuse to replace a ``NAME_files/`` folder holding anything the report does not write.

    ``overwrite`` agrees to replacing a report; a folder of the same name with other files in it is not one.

    Raises:
        qualiclip_metric.score_writer.OutputError: ``folder`` is no folder, or holds other entries.
    """
    from qualiclip_metric.score_writer import OutputError

    if not os.path.lexists(folder):
        return
    if folder.is_symlink() or not folder.is_dir():
        raise OutputError(f"{folder} exists and is not a report's folder of thumbnails; it was left as it is")
    for entry in os.scandir(folder):
        if not (REPORT_FILE_NAME.fullmatch(entry.name) and entry.is_file(follow_symlinks=False)):
            raise OutputError(
                f"{folder} holds {entry.name}, which no report writes; it was left as it is (move it away first)"
            )


def quality_maps(
    model: Any,
    rows: Sequence[Mapping[str, Any]],
    *,
    patch: int = 224,
    stride: int = 112,
    max_size: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    progress: Callable[[], Any] | None = None,
) -> tuple[dict[int, ImageMap], dict[int, str]]:
    """The quality map (``model.quality_map``: window scores) of each row's image that has no error.

    Each image is decoded as it was scored (:func:`~qualiclip_metric.inputs.load_image` with ``max_pixels``,
    then ``max_size``).
    Returns the maps and, for images whose map could not be computed, the reason, both by row index.

    Example:
        >>> maps, errors = quality_maps(model, rows)  # doctest: +SKIP
        >>> write_report(rows, "report.html", pair_names=model.pair_names, maps=maps)  # doctest: +SKIP
    """
    import torch

    from qualiclip_metric.errors import ImageLoadError
    from qualiclip_metric.inputs import load_image, resize_longer_side

    maps: dict[int, ImageMap] = {}
    errors: dict[int, str] = {}
    for index, row in enumerate(rows):
        if row.get("error") is None:
            try:
                image = resize_longer_side(load_image(row["path"], max_pixels)[None], max_size).to(model.device)
                with torch.inference_mode():
                    cells = model.quality_map(image, patch, stride)[0].float().cpu().numpy()
                maps[index] = ImageMap(cells, image.shape[-2], image.shape[-1], patch, stride)
            except (ImageLoadError, OSError, ValueError, RuntimeError) as err:
                errors[index] = str(err)
        if progress is not None:
            progress()
    return maps, errors
