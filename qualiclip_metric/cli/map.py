"""``qualiclip map``: where an image is good or bad, as a map of window scores (PNG overlay, .npy, .json)."""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Any

from qualiclip_metric.cli.common import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    CommandError,
    load_model,
    positive_int,
    scoring_arguments,
)
from qualiclip_metric.quality_map import DEFAULT_CHUNK_SIZE


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "map",
        help="quality maps: the score of overlapping windows of each image",
        description="Score every --patch x --patch window of each image, at --stride steps with the last row and "
        "column aligned to the borders, and write DIR/<stem>.png (the map over the image, each pixel the mean of "
        "the windows covering it, the whole image's score in the title), DIR/<stem>.npy (the rows x cols map, "
        "float32) and DIR/<stem>.json (scores, grid, files). Existing files are never replaced: the run stops "
        "before loading the weights if any output exists.",
    )
    parser.add_argument("paths", nargs="+", metavar="IMAGE", help="image files or folders")
    parser.add_argument("--recursive", "-r", action="store_true", help="descend into sub-folders")
    parser.add_argument(
        "--output", "-o", type=Path, required=True, metavar="DIR", help="folder for the maps (created if missing)"
    )
    parser.add_argument("--patch", type=positive_int, default=224, help="window side in pixels (default 224)")
    parser.add_argument(
        "--stride", type=positive_int, default=112, help="step between windows, at most --patch (default 112)"
    )
    parser.add_argument(
        "--per-pair", action="store_true", help="also write DIR/<stem>.pairs.npy: pairs x rows x cols probabilities"
    )
    parser.add_argument(
        "--chunk-size",
        type=positive_int,
        default=DEFAULT_CHUNK_SIZE,
        help=f"windows per forward pass; bounds memory (default {DEFAULT_CHUNK_SIZE})",
    )
    scoring_arguments(parser, batching=False)
    parser.add_argument("--quiet", "-q", action="store_true", help="no line per image and no summary")
    parser.set_defaults(run=run)


def unique_files(files: list[Path]) -> list[Path]:
    """``files`` with each file once (compared by resolved path; the first mention kept, in order).

    A file given twice, or by a folder and by name, is mapped once instead of colliding with itself.
    """
    seen: set[Path] = set()
    unique = []
    for file in files:
        key = Path(file).resolve()
        if key not in seen:
            seen.add(key)
            unique.append(file)
    return unique


def output_names(files: list[Path], folder: Path, per_pair: bool) -> list[dict[str, Path]]:
    """The files each input gets, by kind; two inputs that would share a file are refused.

    Raises:
        CommandError: names that collide (compared case-insensitively, as some file systems do), or a
            file that exists already (exit 2; nothing is written).
    """
    kinds = {"npy": ".npy", "png": ".png", "json": ".json"} | ({"pairs": ".pairs.npy"} if per_pair else {})
    plans = [{kind: folder / f"{file.stem}{suffix}" for kind, suffix in kinds.items()} for file in files]
    owners: dict[str, Path] = {}
    for file, plan in zip(files, plans, strict=True):
        for target in plan.values():
            other = owners.setdefault(target.name.casefold(), file)
            if other != file:
                raise CommandError(f"{other} and {file} would both write {target}; map them into different folders")
    existing = [str(target) for plan in plans for target in plan.values() if target.exists() or target.is_symlink()]
    if existing:
        shown = ", ".join(existing[:3]) + (f" and {len(existing) - 3} more" if len(existing) > 3 else "")
        raise CommandError(f"{shown} already exist; nothing was replaced (give a new --output folder)")
    return plans


def run(args: argparse.Namespace) -> int:
    import importlib.util

    from qualiclip_metric.inputs import collect_image_files
    from qualiclip_metric.quality_map import validate_window
    from qualiclip_metric.score_writer import OutputError, check_writable

    try:
        validate_window(args.patch, args.stride)
    except ValueError as err:
        raise CommandError(str(err)) from err
    if importlib.util.find_spec("matplotlib") is None:
        raise CommandError('map needs matplotlib for its PNG files: pip install "qualiclip-metric[plot]"')
    files = unique_files(collect_image_files(args.paths, recursive=args.recursive))
    if not files:
        raise CommandError("no image files found in " + ", ".join(args.paths))
    plans = output_names(files, args.output, args.per_pair)
    try:
        args.output.mkdir(parents=True, exist_ok=True)
        check_writable(plans[0]["json"])
    except OutputError as err:
        raise CommandError(str(err)) from err
    except OSError as err:  # a file in the folder's place, no permission
        raise CommandError(f"--output {args.output}: cannot create the folder: {err.strerror or err}") from err
    model = load_model(args)

    failed = []
    for file, plan in zip(files, plans, strict=True):
        try:
            summary = map_file(args, model, file, plan)
        except MapFailed as err:
            failed.append(str(err))
            print(f"qualiclip: failed: {err}", file=sys.stderr)
            continue
        if not args.quiet:
            cells = summary["map"]
            print(
                f"{file}: score {summary['score']:.4f}, map {cells['min']:.4f} to {cells['max']:.4f} "
                f"({len(summary['row_starts'])} x {len(summary['col_starts'])} windows) -> {plan['png']}"
            )
    if not args.quiet:
        print(
            f"qualiclip: mapped {len(files) - len(failed)} of {len(files)} images; {len(failed)} failed",
            file=sys.stderr,
        )
    return EXIT_SOME_FAILED if failed else EXIT_OK


class MapFailed(Exception):
    """One image could not be mapped (it cannot be read, is too small, or ran out of memory); the others go on."""


def map_file(args: argparse.Namespace, model: Any, file: Path, plan: dict[str, Path]) -> dict[str, Any]:
    """Map one image and write its files; returns the JSON summary written.

    Raises:
        MapFailed: the image cannot be decoded or mapped.
        CommandError: an output cannot be written (exit 2; the files of earlier images stay).
    """
    import numpy as np
    import torch

    from qualiclip_metric.errors import ImageLoadError
    from qualiclip_metric.inputs import DEFAULT_MAX_PIXELS, load_image, resize_longer_side
    from qualiclip_metric.plotting import render_quality_map
    from qualiclip_metric.quality_map import window_starts

    max_pixels = DEFAULT_MAX_PIXELS if args.max_pixels is None else args.max_pixels
    try:
        image = resize_longer_side(load_image(file, max_pixels=max_pixels)[None], args.max_size)
        with torch.no_grad():
            score = float(model(image.to(model.device)))
        options = {"per_pair": args.per_pair, "chunk_size": args.chunk_size}
        cells = model.quality_map(image, args.patch, args.stride, **options)[0].cpu()
    except (ImageLoadError, ValueError, RuntimeError) as err:  # RuntimeError: out of memory on the device
        raise MapFailed(str(err) if str(err).startswith(str(file)) else f"{file}: {err}") from err
    scores = cells.mean(dim=0) if args.per_pair else cells  # the score is the mean of the pair probabilities
    height, width = image.shape[-2:]
    summary = {
        "path": str(file),
        "width": width,
        "height": height,
        "score": score,
        "patch": args.patch,
        "stride": args.stride,
        "window": [min(args.patch, height), min(args.patch, width)],
        "row_starts": window_starts(height, args.patch, args.stride),
        "col_starts": window_starts(width, args.patch, args.stride),
        "map": {"min": float(scores.min()), "max": float(scores.max()), "mean": float(scores.mean())},
        "pair_names": model.pair_names if args.per_pair else None,
        "weights": model.source,
        "files": {kind: target.name for kind, target in plan.items() if kind != "json"},
    }
    contents = {"npy": _npy(np.asarray(scores.numpy(), dtype=np.float32))}
    if args.per_pair:
        contents["pairs"] = _npy(np.asarray(cells.numpy(), dtype=np.float32))
    contents["png"] = render_quality_map(
        image, scores, patch=args.patch, stride=args.stride, score=score, title=file.name
    )
    contents["json"] = (json.dumps(summary, indent=2) + "\n").encode()
    for kind, data in contents.items():  # the JSON last: it lists the files of a complete map
        write_new(plan[kind], data)
    return summary


def _npy(array: Any) -> bytes:
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def write_new(path: Path, data: bytes) -> None:
    """Create ``path`` with ``data``; a file that appeared there since the run started is never replaced.

    Raises:
        CommandError: the file exists, or cannot be written (a partial file of ours is removed).
    """
    try:
        handle = open(path, "xb")  # exclusive creation: fails rather than replace
    except FileExistsError:
        raise CommandError(f"{path} appeared during the run; it was not replaced") from None
    except OSError as err:
        raise CommandError(f"{path}: cannot write: {err.strerror or err}") from err
    try:
        with handle:
            handle.write(data)
    except BaseException as err:
        path.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise CommandError(f"{path}: cannot write: {err.strerror or err}") from err
        raise
