"""python -m training.rankiqa.score --weights EXPORT_DIR PATHS... [--output scores.csv]

Writes ``path,score,width,height,error`` like ``qualiclip score`` (see :mod:`training.score_files` for
the behaviour and the exit codes).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from torch import Tensor

from training.score_files import run_score_command, score_parser


def load(args: argparse.Namespace) -> Callable[[Tensor], float]:
    from training.rankiqa.inference import RankIQA

    overrides = {
        key: value
        for key, value in (("crops", args.crops), ("crop_size", args.crop_size), ("seed", args.seed))
        if value is not None
    }
    return RankIQA.from_pretrained(args.weights, device=args.device, **overrides).score_image


def main(argv: Sequence[str] | None = None) -> int:
    parser = score_parser("python -m training.rankiqa.score", "Score images with a trained RankIQA export.")
    parser.add_argument("--weights", required=True, type=Path, help="an export directory written by the trainer")
    parser.add_argument("--crops", type=int, help="random crops per image (default: the export's, 30 in the paper)")
    parser.add_argument("--crop-size", type=int, help="crop side (default: the export's)")
    parser.add_argument("--seed", type=int, help="seed of the crop positions (default: the export's)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    return run_score_command("rankiqa", parser, load, argv)


if __name__ == "__main__":
    sys.exit(main())
