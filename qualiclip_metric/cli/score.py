"""``qualiclip score``: score image files and folders, results in input order (also under torchrun)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from qualiclip_metric.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SOME_FAILED,
    CommandError,
    load_model,
    score_paths,
    scoring_arguments,
)


def add_parser(commands: Any) -> None:
    score = commands.add_parser(
        "score", help="score image files and folders", description="Score images; results keep the input order."
    )
    score.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    score.add_argument("--recursive", "-r", action="store_true", help="descend into sub-folders")
    scoring_arguments(score)
    score.add_argument(
        "--prompt-pair",
        nargs=2,
        action="append",
        metavar=("POSITIVE", "NEGATIVE"),
        help="custom antonym pair (repeatable)",
    )
    score.add_argument("--per-pair", action="store_true", help="also report the probability of every antonym pair")
    score.add_argument(
        "--output", "-o", type=Path, help="write results to FILE.csv, .json or .jsonl (default: CSV on stdout)"
    )
    score.add_argument("--quiet", "-q", action="store_true", help="no progress bar and no summary")
    score.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from qualiclip_metric.distributed import gather_in_order, init_process_group, ranks_from_environment, shard
    from qualiclip_metric.inputs import collect_image_files
    from qualiclip_metric.score_writer import OutputError, ScoringInterrupted, check_output, write_scores

    ranks = ranks_from_environment()
    try:
        if args.output is not None and ranks.is_main:
            check_output(args.output)
        if args.prompt_pair:
            from qualiclip_metric.config import validate_prompt_pairs

            validate_prompt_pairs(args.prompt_pair)
    except (OutputError, ValueError) as err:
        raise CommandError(str(err)) from err
    files = collect_image_files(args.paths, recursive=args.recursive)
    if not files:
        raise CommandError("no image files found in " + ", ".join(args.paths))
    model = load_model(args, prompts=args.prompt_pair, local_rank=ranks.local_rank)

    start = time.perf_counter()
    if ranks.enabled:  # under torchrun: each rank scores a shard, rank 0 writes everything in input order
        init_process_group(ranks, model.device)
        shard_results = score_paths(args, model, shard(files, ranks), per_pair=args.per_pair)
        results = gather_in_order(shard_results, ranks, len(files))
        if not ranks.is_main:
            return EXIT_OK
    else:
        results = score_paths(args, model, files, per_pair=args.per_pair)
    pair_names = model.pair_names if args.per_pair else []
    progress = tqdm(total=len(files), unit="img", file=sys.stderr, disable=True if args.quiet else None)
    try:
        summary = write_scores(results, args.output, pair_names=pair_names, progress=progress.update)
    except OutputError as err:
        raise CommandError(f"{err}; nothing was replaced") from err
    except ScoringInterrupted as stop:
        where = f"; the {stop.count} results so far are in {stop.kept}" if stop.kept else ""
        raise CommandError(f"interrupted after {stop.count} of {len(files)} images{where}", EXIT_INTERRUPTED) from None
    finally:
        progress.close()
    elapsed = time.perf_counter() - start
    failed = summary.failed
    if not args.quiet:
        for row in failed:
            print(f"qualiclip: failed: {row['error']}", file=sys.stderr)
        mean = f", mean score {summary.mean:.4f}" if summary.scored else ""
        print(
            f"qualiclip: scored {summary.scored} of {len(files)} images in {elapsed:.1f} s "
            f"({summary.scored / max(elapsed, 1e-9):.2f} images/s){mean}; {len(failed)} failed",
            file=sys.stderr,
        )
    return EXIT_SOME_FAILED if failed else EXIT_OK
