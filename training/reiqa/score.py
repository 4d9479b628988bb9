"""python -m training.reiqa.score: score images with a fitted Re-IQA regressor, in ``qualiclip score``'s layout.

Writes ``path,score,width,height,error`` per image in input order (see :mod:`training.score_files` for
the behaviour and the exit codes). The encoders and options are the ones recorded in the regressor's
``regressor.json``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from training.reiqa.features import FeatureExtractor, encoder_from_spec
from training.reiqa.regressor import RidgeRegressor
from training.score_files import run_score_command, score_parser


def _spec(info: dict[str, object]) -> str:
    return f"random:{info['seed']}" if info["source"] == "random" else str(info["source"])


def load(args: argparse.Namespace) -> Callable[[Tensor], float]:
    """The regressor over the two encoders it was fitted with (a CheckpointError is a ValueError)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    regressor, record = RidgeRegressor.load(args.regressor)
    encoders = record["encoders"]
    content, _ = encoder_from_spec(_spec(encoders["content"]), str(encoders["content"]["arch"]))
    quality, _ = encoder_from_spec(_spec(encoders["quality"]), str(encoders["quality"]["arch"]))
    extractor = FeatureExtractor(content, quality, record.get("max_size"), record.get("precision", "fp32"))
    return lambda image: float(regressor.predict(extractor(image[None]).numpy())[0])


def main(argv: Sequence[str] | None = None) -> int:
    parser = score_parser("python -m training.reiqa.score", "Score images with a fitted Re-IQA regressor.")
    parser.add_argument("--regressor", type=Path, required=True, help="folder written by evaluate --save-regressor")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    return run_score_command("reiqa", parser, load, argv)


if __name__ == "__main__":
    sys.exit(main())
