"""python -m training.reiqa.score: score images with a fitted Re-IQA regressor, in ``qualiclip score``'s CSV layout.

Writes ``path,score,width,height,error`` per image in input order; files that cannot be read get their
error and an empty score, and the rest are still scored (exit code 1 when any failed, as ``qualiclip``).
The encoders and options are the ones recorded in the regressor's ``regressor.json``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from qualiclip_metric.inputs import collect_image_files
from training.reiqa.features import FeatureExtractor, encoder_from_spec
from training.reiqa.model import CheckpointError
from training.reiqa.regressor import RidgeRegressor
from training.score_files import score_paths, write_scores


def _spec(info: dict[str, object]) -> str:
    return f"random:{info['seed']}" if info["source"] == "random" else str(info["source"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.reiqa.score", description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", help="image files or folders")
    parser.add_argument("--regressor", type=Path, required=True, help="folder written by evaluate --save-regressor")
    parser.add_argument("--recursive", action="store_true", help="search folders recursively")
    parser.add_argument("--output", type=Path, help="CSV file (default: standard output)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    files = collect_image_files(args.paths, recursive=args.recursive)
    if not files:
        print("reiqa: no image files found in " + ", ".join(args.paths), file=sys.stderr)
        return 2
    try:
        regressor, record = RidgeRegressor.load(args.regressor)
        encoders = record["encoders"]
        content, _ = encoder_from_spec(_spec(encoders["content"]), str(encoders["content"]["arch"]))
        quality, _ = encoder_from_spec(_spec(encoders["quality"]), str(encoders["quality"]["arch"]))
    except (OSError, ValueError, KeyError, CheckpointError) as err:
        print(f"reiqa: cannot load the regressor or its encoders: {err}", file=sys.stderr)
        return 3
    extractor = FeatureExtractor(content, quality, record.get("max_size"), record.get("precision", "fp32"))
    rows = score_paths(files, lambda image: float(regressor.predict(extractor(image[None]).numpy())[0]))
    return write_scores(rows, args.output, "reiqa")


if __name__ == "__main__":
    sys.exit(main())
