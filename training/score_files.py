"""Scoring files with a baseline, written by the library's one score writer in ``qualiclip score``'s layout.

So ``qualiclip evaluate --predictions`` reads a baseline's file as it reads QualiCLIP's, and a baseline's
command behaves as ``qualiclip score`` does: files that cannot be read get their error and the rest are
still scored; an existing output is replaced only by a complete one, and ``--resume`` continues an
interrupted run as ``qualiclip score --resume`` does (see docs/cli.md). Exit codes: 0 all scored; 1 some
failed; 2 no input images or an output that cannot be written; 3 the weights could not be loaded;
130 interrupted (the rows so far are kept).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from torch import Tensor

from qualiclip_metric.batch import FileScore
from qualiclip_metric.errors import ImageLoadError
from qualiclip_metric.inputs import collect_image_files, load_image
from qualiclip_metric.score_writer import (
    OutputError,
    ScoreFileError,
    ScoringInterrupted,
    check_output,
    plan_resume,
    write_scores,
)

#: Loads a scorer from the parsed arguments: a function of one (3, H, W) image. Raising OSError,
#: ValueError, KeyError or RuntimeError means the weights could not be loaded (exit code 3).
LoadScorer = Callable[[argparse.Namespace], Callable[[Tensor], float]]


def score_paths(paths: Iterable[str | os.PathLike], score_image: Callable[[Tensor], float]) -> Iterator[FileScore]:
    """One result per path, in order; a file that cannot be read gets its error and the rest are still scored."""
    for index, path in enumerate(paths):
        try:
            image = load_image(path)
        except ImageLoadError as err:
            yield FileScore(index, str(path), error=str(err))
            continue
        yield FileScore(index, str(path), float(score_image(image)), image.shape[-1], image.shape[-2])


def score_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The arguments every baseline's scoring command shares; each adds those of its weights."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("paths", nargs="+", help="image files or folders")
    parser.add_argument("--output", "-o", type=Path, help="FILE.csv, .json or .jsonl (default: CSV on standard output)")
    parser.add_argument("--recursive", "-r", action="store_true", help="search folders recursively")
    parser.add_argument(
        "--resume", action="store_true", help="keep the rows --output already holds and score only the other files"
    )
    return parser


def run_score_command(
    name: str, parser: argparse.ArgumentParser, load: LoadScorer, argv: Sequence[str] | None = None
) -> int:
    """Parse, check the inputs and the output, load the scorer, and write every file's score.

    ``name`` starts each message (``rankiqa: ...``).
    """
    args = parser.parse_args(argv)
    if args.resume and args.output is None:
        print(f"{name}: --resume continues an --output file: give --output FILE.csv or FILE.jsonl", file=sys.stderr)
        return 2
    try:
        if args.output is not None:
            check_output(args.output, resume=args.resume)
        files = collect_image_files(args.paths, recursive=args.recursive)
        plan = plan_resume(args.output, files) if args.resume and files else None
        todo = plan.todo if plan is not None else files
    except (OutputError, ValueError) as err:  # a score file --resume cannot continue is a ValueError
        print(f"{name}: {err}", file=sys.stderr)
        return 2
    if not files:
        print(f"{name}: no image files found in " + ", ".join(args.paths), file=sys.stderr)
        return 2
    if args.resume:
        kept = plan.kept if plan is not None else 0  # not len(files) - len(todo): a file listed twice is scored once
        print(f"{name}: resuming {args.output}: {kept} kept, {len(todo)} to score", file=sys.stderr)
    try:
        score_image = load(args)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        print(f"{name}: cannot load the weights: {err}", file=sys.stderr)
        return 3
    try:
        summary = write_scores(score_paths(todo, score_image), args.output, resume=files if args.resume else None)
    except (OutputError, ScoreFileError) as err:  # ScoreFileError: the output changed during the run
        print(f"{name}: {err}; nothing was replaced", file=sys.stderr)
        return 2
    except ScoringInterrupted as stop:
        where = f"; the {stop.count} results so far are in {stop.kept}" if stop.kept else ""
        print(f"{name}: interrupted after {stop.count} of {len(todo)} images{where}", file=sys.stderr)
        return 130
    for row in summary.failed:
        print(f"{name}: failed: {row['error']}", file=sys.stderr)
    print(f"{name}: scored {summary.scored} of {len(todo)} images; {len(summary.failed)} failed", file=sys.stderr)
    return 1 if summary.failed else 0
