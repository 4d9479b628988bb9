"""``qualiclip report``: one HTML page of scored images (folders scored here, or a score file read)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from qualiclip_metric.cli.common import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    CommandError,
    load_model,
    positive_int,
    score_paths,
    scoring_arguments,
)

#: Suffixes that make an input a score file (as `qualiclip score` writes them) instead of an image.
SCORE_SUFFIXES = (".csv", ".jsonl", ".json")


def add_parser(commands: Any) -> None:
    report = commands.add_parser(
        "report",
        help="an HTML report of scored images",
        description="Write one self-contained HTML page: worst and best images, a histogram of scores, the "
        "scatter against MOS (--scores), and a sortable, filterable table with thumbnails, per-pair bars, "
        "quality maps (--maps) and errors. Folders and image files are scored here; a score file written by "
        "`qualiclip score` is read instead.",
    )
    report.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="image files and folders, or one score file (.csv, .jsonl, .json)"
    )
    report.add_argument("--output", "-o", type=Path, required=True, help="the page to write (.html)")
    report.add_argument("--force", action="store_true", help="replace an existing page (default: refuse, exit 2)")
    report.add_argument("--recursive", "-r", action="store_true", help="descend into sub-folders")
    report.add_argument(
        "--scores", type=Path, metavar="MOS_CSV", help="subjective scores (image,mos CSV or pyiqa's meta_info_*.csv)"
    )
    report.add_argument("--name", help="the --scores dataset's name (default: from its file name)")
    report.add_argument(
        "--images",
        type=Path,
        metavar="DIR",
        help="folder the --scores paths are relative to (default: the input folder; rows also match by file name)",
    )
    report.add_argument(
        "--maps", action="store_true", help="add each image's quality map (loads the weights for a score file too)"
    )
    report.add_argument("--patch", type=positive_int, default=224, help="quality-map window side (default 224)")
    report.add_argument("--stride", type=positive_int, default=112, help="quality-map window step (default 112)")
    report.add_argument(
        "--thumbnails",
        choices=("auto", "embed", "files"),
        default="auto",
        help="embed thumbnails in the page, or write them to NAME_files/ beside it; auto embeds up to 24 MiB "
        "(about 6,000 photographs)",
    )
    report.add_argument("--title", help="page title (default: from the inputs)")
    report.add_argument("--quiet", "-q", action="store_true", help="no progress bar and no summary")
    scoring_arguments(report)
    report.set_defaults(run=run)


def _score_file(inputs: list[str]) -> Path | None:
    """The score file among ``inputs``, or None when they are images and folders.

    Raises:
        CommandError: a score file given with other inputs, or one that does not exist.
    """
    candidates = [Path(name) for name in inputs if Path(name).suffix.lower() in SCORE_SUFFIXES]
    if not candidates:
        return None
    if len(inputs) > 1:
        raise CommandError("give one score file, or images and folders, not both")
    if not candidates[0].is_file():
        raise CommandError(f"{candidates[0]}: no such score file")
    return candidates[0]


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from qualiclip_metric.inputs import DEFAULT_MAX_PIXELS
    from qualiclip_metric.report import check_report_output, locate_rows, quality_maps, write_report
    from qualiclip_metric.score_writer import OutputError, read_scores, score_row

    score_file = _score_file(args.inputs)
    try:
        check_report_output(args.output, overwrite=args.force)
        table = read_scores(score_file) if score_file is not None else None
        if table is not None and not table.rows:
            raise ValueError(f"{score_file}: the score file holds no images")
        dataset = _subjective_scores(args) if args.scores is not None else None
        if args.maps:
            from qualiclip_metric.quality_map import validate_window

            validate_window(args.patch, args.stride)
    except FileExistsError as err:
        raise CommandError(f"{err.filename} already exists; nothing was written (--force replaces it)") from err
    except (OSError, ValueError) as err:  # OutputError is an OSError
        raise CommandError(str(err)) from err
    if table is None:
        from qualiclip_metric.inputs import collect_image_files

        files = collect_image_files(args.inputs, recursive=args.recursive)
        if not files:
            raise CommandError("no image files found in " + ", ".join(args.inputs))
    model = load_model(args) if table is None or args.maps else None
    quiet = True if args.quiet else None
    if table is None:
        pair_names = list(model.pair_names)
        progress = tqdm(total=len(files), unit="img", desc="scoring", file=sys.stderr, disable=quiet)
        rows = []
        for result in score_paths(args, model, files, per_pair=True):
            rows.append(score_row(result, pair_names))
            progress.update()
        progress.close()
        source = f"weights {model.source}"
    else:
        rows, pair_names, source = (
            locate_rows(table.rows, score_file.parent),
            table.pair_names,
            f"score file {score_file}",
        )
    maps, map_errors = {}, {}
    max_pixels = DEFAULT_MAX_PIXELS if args.max_pixels is None else args.max_pixels  # as the images were scored
    if args.maps:
        progress = tqdm(total=len(rows), unit="img", desc="maps", file=sys.stderr, disable=quiet)
        maps, map_errors = quality_maps(
            model,
            rows,
            patch=args.patch,
            stride=args.stride,
            max_size=args.max_size,
            max_pixels=max_pixels,
            progress=progress.update,
        )
        progress.close()
    progress = tqdm(total=len(rows), unit="img", desc="thumbnails", file=sys.stderr, disable=quiet)
    try:
        summary = write_report(
            rows,
            args.output,
            pair_names=pair_names,
            title=args.title or "QualiCLIP report: " + ", ".join(Path(name).name or name for name in args.inputs),
            source=source,
            dataset=dataset,
            maps=maps,
            thumbnails=args.thumbnails,
            overwrite=args.force,
            progress=progress.update,
            max_pixels=max_pixels,
        )
    except (OutputError, FileExistsError) as err:
        raise CommandError(f"{err}; nothing was replaced") from err
    finally:
        progress.close()
    if not args.quiet:
        for row in summary.failed:
            print(f"qualiclip: failed: {row['error']}", file=sys.stderr)
        for message in map_errors.values():
            print(f"qualiclip: no quality map: {message}", file=sys.stderr)
        for message in summary.no_preview.values():
            print(f"qualiclip: no thumbnail: {message}", file=sys.stderr)
        beside = f" and {summary.files}/" if summary.files else ""
        print(
            f"qualiclip: wrote {summary.path}{beside} ({summary.bytes / 2**20:.1f} MiB): {summary.images} images, "
            f"{summary.scored} scored, {len(summary.failed)} failed",
            file=sys.stderr,
        )
    return EXIT_SOME_FAILED if summary.failed or map_errors else EXIT_OK


def _subjective_scores(args: argparse.Namespace) -> Any:
    """The --scores dataset, read as ``qualiclip evaluate`` reads it; image files need not exist."""
    from qualiclip_metric.datasets import read_csv_dataset
    from qualiclip_metric.evaluation import check_scores

    folder = args.images
    if folder is None:
        folders = [Path(name) for name in args.inputs if Path(name).is_dir()]
        folder = folders[0] if len(folders) == 1 else args.scores.parent
    dataset = read_csv_dataset(folder, args.scores, name=args.name, check_files=False)
    check_scores(dataset.scores, f"{args.scores}: the subjective scores")
    return dataset
