"""python -m training.rankiqa.score --weights EXPORT_DIR PATHS... [--output scores.csv]

Writes ``path,score,width,height,error`` like ``qualiclip score``: files that cannot be read get their
error and the others are still scored. Exit codes: 0 all scored; 1 some failed; 2 no input images; 3
the weights could not be loaded.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.rankiqa.score", description=__doc__.split("\n\n")[1])
    parser.add_argument("paths", nargs="+", help="image files or folders")
    parser.add_argument("--weights", required=True, type=Path, help="an export directory written by the trainer")
    parser.add_argument("--output", "-o", type=Path, help="CSV file (default: standard output)")
    parser.add_argument("--recursive", "-r", action="store_true", help="search folders recursively")
    parser.add_argument("--crops", type=int, help="random crops per image (default: the export's, 30 in the paper)")
    parser.add_argument("--crop-size", type=int, help="crop side (default: the export's)")
    parser.add_argument("--seed", type=int, help="seed of the crop positions (default: the export's)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    args = parser.parse_args(argv)

    from qualiclip_metric.inputs import collect_image_files
    from training.rankiqa.inference import RankIQA
    from training.score_files import write_scores

    files = collect_image_files(args.paths, recursive=args.recursive)
    if not files:
        print("rankiqa: no image files found in " + ", ".join(args.paths), file=sys.stderr)
        return 2
    overrides = {
        key: value
        for key, value in (("crops", args.crops), ("crop_size", args.crop_size), ("seed", args.seed))
        if value is not None
    }
    try:
        model = RankIQA.from_pretrained(args.weights, device=args.device, **overrides)
    except (OSError, ValueError, RuntimeError) as err:
        print(f"rankiqa: cannot load the weights: {err}", file=sys.stderr)
        return 3
    return write_scores(model.score_files(files), args.output, "rankiqa")


if __name__ == "__main__":
    sys.exit(main())
