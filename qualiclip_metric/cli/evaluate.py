"""``qualiclip evaluate``: correlation of QualiCLIP's (or given) scores with subjective scores on a dataset."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from qualiclip_metric.cli.common import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    CommandError,
    fraction,
    integer_at_least,
    load_model,
    positive_int,
    score_paths,
    scoring_arguments,
)


def add_parser(commands: Any) -> None:
    evaluate = commands.add_parser(
        "evaluate",
        help="correlation with subjective scores on a dataset",
        description="Score a dataset and report SRCC, KRCC, PLCC (raw and after a logistic fit) and RMSE.",
    )
    evaluate.add_argument("--images", type=Path, required=True, help="folder the CSV's image paths are relative to")
    evaluate.add_argument(
        "--scores", type=Path, required=True, help="image,mos CSV or a pyiqa meta_info_*.csv (NR or FR layout)"
    )
    evaluate.add_argument("--name", help="dataset name (default: from the CSV file name)")
    evaluate.add_argument("--splits", type=positive_int, default=10, help="random splits of the protocol (default 10)")
    evaluate.add_argument("--test-fraction", type=fraction, default=0.2, help="test part of each split (default 0.2)")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the splits and the bootstrap (default 0)")
    evaluate.add_argument(
        "--bootstrap", type=integer_at_least(0), default=1000, help="bootstrap resamples; 0 disables (default 1000)"
    )
    evaluate.add_argument(
        "--split-files",
        type=Path,
        help="folder with ARNIQA's train.npy and test.npy: use its splits instead of random ones",
    )
    evaluate.add_argument("--plot", type=Path, help="save a scatter plot with the fitted logistic (needs matplotlib)")
    evaluate.add_argument("--output", "-o", type=Path, help="write the full report as JSON")
    evaluate.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    evaluate.add_argument(
        "--predictions",
        type=Path,
        help="evaluate the scores in this file (path,score[,error] CSV, JSONL or JSON, as `qualiclip score` writes) "
        "instead of QualiCLIP's",
    )
    scoring_arguments(evaluate)
    evaluate.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from qualiclip_metric.datasets import read_csv_dataset
    from qualiclip_metric.evaluation import (
        Protocol,
        check_scores,
        dataset_splits,
        evaluate_predictions,
        read_predictions,
        report_table,
    )
    from qualiclip_metric.score_writer import check_writable, write_json_atomically

    try:
        for path in (args.output, args.plot):
            if path is not None:
                check_writable(path)
        if args.plot is not None:
            import importlib.util

            if importlib.util.find_spec("matplotlib") is None:
                raise ValueError('--plot needs matplotlib: pip install "qualiclip-metric[plot]"')
        dataset = read_csv_dataset(args.images, args.scores, name=args.name)
        check_scores(dataset.scores, f"{args.scores}: the subjective scores")
        protocol = Protocol(
            splits=args.splits,
            test_fraction=args.test_fraction,
            seed=args.seed,
            bootstrap=args.bootstrap,
            split_files=args.split_files,
        )
        dataset_splits(dataset, protocol)  # split files that do not fit are refused before anything is scored
        if args.predictions is not None:
            predictions, errors = read_predictions(args.predictions, dataset)
            source = f"predictions {args.predictions}"
    except (OSError, ValueError) as err:
        raise CommandError(str(err)) from err
    if args.predictions is None:
        model = load_model(args)
        predictions, errors = score_dataset(args, model, dataset)
        source = model.source
    scored = int(np.isfinite(predictions).sum())
    if scored < 3:
        raise CommandError(f"only {scored} images could be scored; need at least 3", EXIT_SOME_FAILED)
    try:
        report = {"weights": source, **evaluate_predictions(dataset, predictions, protocol, errors=errors)}
    except (OSError, ValueError) as err:  # e.g. a split whose test part has fewer than 3 images
        raise CommandError(f"cannot evaluate: {err}") from err
    print(report_table(report))
    try:
        if args.output:
            write_json_atomically(args.output, report)
        if args.plot:
            from qualiclip_metric.plotting import scatter_with_logistic

            scatter_with_logistic(
                np.array([row["score"] for row in report["scores"]]),
                np.array([row["mos"] for row in report["scores"]]),
                args.plot,
                title=f"{dataset.name}: SRCC {report['all_images']['srcc']:.3f}",
                target_higher_is_better=dataset.higher_is_better,
            )
    except OSError as err:
        raise CommandError(str(err)) from err
    for row in report["failed"]:
        print(f"qualiclip: failed: {row['error']}", file=sys.stderr)
    return EXIT_SOME_FAILED if report["failed"] else EXIT_OK


def score_dataset(args: argparse.Namespace, model: Any, dataset: Any) -> tuple[Any, dict[int, str]]:
    """The model's score of each image of ``dataset`` (NaN where it failed) and the errors by row."""
    import numpy as np
    from tqdm import tqdm

    progress = tqdm(total=len(dataset), unit="img", file=sys.stderr, disable=True if args.quiet else None)
    predictions, errors = np.full(len(dataset), np.nan), {}
    for row, result in enumerate(score_paths(args, model, dataset.paths)):
        progress.update()
        if result.ok:
            predictions[row] = result.score
        else:
            errors[row] = result.error
    progress.close()
    return predictions, errors
