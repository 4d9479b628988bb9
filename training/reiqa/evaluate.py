"""python -m training.reiqa.evaluate: Re-IQA features of an IQA dataset, regressed to MOS over random splits.

Extracts the 8192-d (for ResNet-50) content + quality features of every image of a folder and score CSV,
then for each of ``--splits`` random 80/20 splits (by reference image for full-reference sets, or the splits
of ``--split-files``) fits the cross-validated ridge regressor on the training part and measures SRCC/PLCC
on the test part; the medians are the reported figures. ``--save-regressor``
also fits one regressor on all images for ``training.reiqa.score``. Features can be cached per encoder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qualiclip_metric.datasets import read_csv_dataset
from qualiclip_metric.evaluation import Protocol, dataset_splits
from qualiclip_metric.integrity import sha256_file
from training.reiqa.features import encoder_from_spec, multiscale_features, read_images
from training.reiqa.model import ARCHITECTURES, CheckpointError, ResNetTrunk
from training.reiqa.regressor import RidgeRegressor, split_evaluation


def encoder_features(
    trunk: ResNetTrunk,
    info: dict[str, Any],
    paths: Sequence[Path],
    *,
    max_size: int | None,
    precision: str,
    cache: Path | None,
    label: str,
) -> tuple[np.ndarray, dict[int, str]]:
    """Features (N, 2 * feature_dim) of ``paths`` (rows of failed files are NaN) and the errors by row.

    With ``cache``, the result is stored under a name that hashes the encoder (file digest or random
    seed), the options and the file list, so a changed input never reuses stale features.
    """
    key = dict(info)
    if key["source"] != "random":
        key["sha256"] = sha256_file(Path(str(key["source"])))
    key.update(max_size=max_size, precision=precision, files=[str(p) for p in paths])
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    cached = cache / f"{label}-{name}.npz" if cache is not None else None
    if cached is not None and cached.is_file():
        data = np.load(cached, allow_pickle=False)
        return data["features"], {int(i): str(e) for i, e in zip(data["error_rows"], data["errors"], strict=True)}
    features = np.full((len(paths), 2 * trunk.feature_dim), np.nan, dtype=np.float32)
    errors: dict[int, str] = {}
    started = time.perf_counter()
    for row, (_, image, error) in enumerate(read_images(paths)):
        if image is None:
            errors[row] = str(error)
            continue
        features[row] = multiscale_features(trunk, image[None], max_size, precision)[0].numpy()
        if (row + 1) % 100 == 0:
            rate = (row + 1) / (time.perf_counter() - started)
            print(f"reiqa: {label}: {row + 1}/{len(paths)} images ({rate:.2f}/s)", file=sys.stderr)
    if cached is not None:
        cache.mkdir(parents=True, exist_ok=True)
        rows = np.asarray(sorted(errors), dtype=np.int64)
        np.savez(cached, features=features, error_rows=rows, errors=np.asarray([errors[r] for r in rows], dtype=str))
    return features, errors


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.reiqa.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=Path, required=True, help="image folder")
    parser.add_argument("--scores", type=Path, required=True, help="score CSV (image,mos or a pyiqa meta_info file)")
    parser.add_argument(
        "--content",
        required=True,
        help="content encoder: a weights file (MoCo-v2 or torchvision ResNet), or random[:SEED]",
    )
    parser.add_argument(
        "--quality", required=True, help="quality encoder: an export folder, a weights file, or random[:SEED]"
    )
    parser.add_argument("--arch", default="resnet50", choices=ARCHITECTURES, help="trunk of random or file encoders")
    parser.add_argument("--max-size", type=int, help="downscale the longer side to this first (default: full size)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--splits", type=int, default=10)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random splits and the CV folds")
    parser.add_argument(
        "--split-files",
        type=Path,
        help="folder with ARNIQA's train.npy and test.npy: its splits instead of random ones",
    )
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds for the ridge strength")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--cache", type=Path, help="folder for per-encoder feature files (reused when inputs match)")
    parser.add_argument("--save-regressor", type=Path, help="also fit on all images and write the regressor here")
    parser.add_argument("--output", type=Path, help="write the results as JSON (also printed)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        dataset = read_csv_dataset(args.images, args.scores)
        # Refuse split options and files that do not fit before extracting anything.
        dataset_splits(dataset, Protocol(args.splits, args.test_fraction, args.seed, split_files=args.split_files))
        content, content_info = encoder_from_spec(args.content, args.arch)
        quality, quality_info = encoder_from_spec(args.quality, args.arch)
    except (OSError, ValueError, CheckpointError) as err:
        print(f"reiqa: {err}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    options = {"max_size": args.max_size, "precision": args.precision, "cache": args.cache}
    parts, failed = [], {}
    for label, trunk, info in (("content", content, content_info), ("quality", quality, quality_info)):
        features, errors = encoder_features(trunk, info, dataset.paths, label=label, **options)
        parts.append(features)
        failed.update(errors)
    features = np.concatenate(parts, axis=1)
    features[sorted(failed)] = np.nan  # left out by the protocol, listed with their errors
    extraction_seconds = time.perf_counter() - started
    try:
        result = split_evaluation(
            features,
            dataset.scores,
            splits=args.splits,
            test_fraction=args.test_fraction,
            seed=args.seed,
            split_files=args.split_files,
            folds=args.folds,
            dataset=dataset,
            errors=failed,
        )
    except (OSError, ValueError) as err:
        print(f"reiqa: cannot evaluate: {err}", file=sys.stderr)
        return 2
    keep = np.isfinite(features).all(axis=1)
    encoders = {"content": content_info, "quality": quality_info}
    report: dict[str, Any] = {
        **result,
        "feature_dim": int(features.shape[1]),
        "feature_layout": ["content_full", "content_half", "quality_full", "quality_half"],
        "encoders": encoders,
        "max_size": args.max_size,
        "precision": args.precision,
        "regressor": "ridge, features standardised, alpha by k-fold CV on each training part (by content if known)",
        "extraction_seconds": extraction_seconds,
    }
    if args.save_regressor is not None:
        groups = np.asarray(dataset.groups)[keep] if dataset.groups is not None else None
        model = RidgeRegressor(folds=args.folds, seed=args.seed).fit(features[keep], dataset.scores[keep], groups)
        model.save(
            args.save_regressor,
            {
                "encoders": encoders,
                "max_size": args.max_size,
                "precision": args.precision,
                "feature_layout": report["feature_layout"],
                "fitted_on": {"images": str(args.images), "scores": str(args.scores), "count": int(keep.sum())},
                "higher_is_better": bool(dataset.higher_is_better),
            },
        )
        report["regressor_saved_to"] = str(args.save_regressor)
    text = json.dumps(report, indent=2)
    print(text)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
