"""Compare two checkpoints: is a regenerated checkpoint the published one, or close enough to it?

    python -m hub.verify REFERENCE CANDIDATE [--images DIR [--scores CSV]] [--tolerance 1e-5] [--output FILE.json]

REFERENCE and CANDIDATE are any weights sources (``hf-hub:ORG/REPO@REV``, a layout folder, a
``.safetensors`` or ``.pth`` file). Reports tensor differences, score agreement on an image folder (or
generated images), and, given an ``image,mos`` CSV, each checkpoint's SRCC/PLCC against the MOS.
Exit code 0 when every score agrees within the tolerance, 1 otherwise, 2 when a checkpoint, the image
folder or the MOS file cannot be used.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hub.compare import probe_images, score_all
from qualiclip_metric import CheckpointError, QualiCLIP, WeightsNotFoundError
from qualiclip_metric.checkpoint import StateDict
from qualiclip_metric.datasets import read_csv_dataset
from qualiclip_metric.evaluation import Protocol, correlations, evaluate_predictions
from qualiclip_metric.weights import load_checkpoint


def tensor_differences(reference: StateDict, candidate: StateDict) -> dict[str, Any]:
    """Keys on one side only, and the largest absolute differences of the shared tensors."""
    shared = sorted(set(reference) & set(candidate))
    differences = {}
    for key in shared:
        a, b = reference[key], candidate[key]
        differences[key] = float("inf") if a.shape != b.shape else float((a.double() - b.double()).abs().max())
    largest = sorted(differences.items(), key=lambda item: item[1], reverse=True)
    return {
        "only_in_reference": sorted(set(reference) - set(candidate)),
        "only_in_candidate": sorted(set(candidate) - set(reference)),
        "identical_tensors": sum(value == 0.0 for value in differences.values()),
        "shared_tensors": len(shared),
        "max_abs_difference": largest[0][1] if largest else 0.0,
        "largest": [{"key": key, "max_abs_difference": value} for key, value in largest[:5] if value > 0],
    }


def verify(
    reference: str, candidate: str, *, images: Path | None, scores: Path | None, tolerance: float
) -> dict[str, Any]:
    checkpoints = [load_checkpoint(source, verify="always") for source in (reference, candidate)]
    report: dict[str, Any] = {
        "reference": checkpoints[0].origin,
        "candidate": checkpoints[1].origin,
        "tensors": tensor_differences(checkpoints[0].image_state, checkpoints[1].image_state),
    }
    probes = probe_images(images)
    with torch.inference_mode():
        predicted = [score_all(QualiCLIP.from_checkpoint(checkpoint), probes) for checkpoint in checkpoints]
    difference = (predicted[0] - predicted[1]).abs()
    report["scores"] = {
        "images": len(probes),
        "source": str(images) if images else "generated",
        "max_abs_difference": float(difference.max()),
        "mean_abs_difference": float(difference.mean()),
        **({"srcc_between": correlations(predicted[0], predicted[1])["srcc"]} if len(probes) > 2 else {}),
    }
    if scores is not None:
        report["mos"] = _against_mos(images, scores, list(probes), predicted)
    report["tolerance"] = tolerance
    report["match"] = report["scores"]["max_abs_difference"] <= tolerance
    return report


def _against_mos(images: Path, scores: Path, names: list[str], predicted: list[torch.Tensor]) -> dict[str, Any]:
    """Each checkpoint's evaluation report (whole set and split median) on the images that have a subjective score."""
    dataset = read_csv_dataset(images, scores, check_files=False)
    row_of = {name: row for row, name in enumerate(names)}
    rows = [row_of.get(path.name) for path in dataset.paths]
    if sum(row is not None for row in rows) < 3:
        raise ValueError(f"{scores}: fewer than 3 of the images have a MOS")
    result: dict[str, Any] = {"images": sum(row is not None for row in rows)}
    for side, values in zip(("reference", "candidate"), predicted, strict=True):
        aligned = np.array([np.nan if row is None else float(values[row]) for row in rows])
        evaluation = evaluate_predictions(dataset, aligned, Protocol(bootstrap=0))
        result[side] = {**evaluation["all_images"], "split_median": evaluation["splits"]["median"]}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reference")
    parser.add_argument("candidate")
    parser.add_argument("--images", type=Path, help="folder of images to score (default: generated images)")
    parser.add_argument("--scores", type=Path, help="image,mos CSV for the images in --images")
    parser.add_argument("--tolerance", type=float, default=1e-5, help="largest allowed score difference")
    parser.add_argument("--output", type=Path, help="write the report as JSON")
    args = parser.parse_args(argv)
    if args.scores is not None and args.images is None:
        parser.error("--scores needs --images")
    try:
        report = verify(
            args.reference, args.candidate, images=args.images, scores=args.scores, tolerance=args.tolerance
        )
    except (CheckpointError, WeightsNotFoundError) as err:
        print(f"hub.verify: cannot load a checkpoint:\n{err}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as err:  # a malformed source, or an image folder or MOS file that cannot be used
        print(f"hub.verify: {err}", file=sys.stderr)
        return 2
    tensors, scores = report["tensors"], report["scores"]
    print(f"reference: {report['reference']}\ncandidate: {report['candidate']}")
    print(
        f"tensors: {tensors['identical_tensors']} of {tensors['shared_tensors']} identical, "
        f"max |difference| {tensors['max_abs_difference']:.3g}; only in reference {len(tensors['only_in_reference'])}, "
        f"only in candidate {len(tensors['only_in_candidate'])}"
    )
    for row in tensors["largest"]:
        print(f"  {row['key']}: {row['max_abs_difference']:.3g}")
    difference = scores["max_abs_difference"]
    print(f"scores on {scores['images']} {scores['source']} images: max |difference| {difference:.3g}")
    for side in ("reference", "candidate") if "mos" in report else ():
        values, count = report["mos"][side], report["mos"]["images"]
        print(f"{side} against MOS ({count} images): SRCC {values['srcc']:.4f}, PLCC {values['plcc']:.4f}")
    print("MATCH" if report["match"] else f"MISMATCH (tolerance {args.tolerance:g})")
    if args.output:
        args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0 if report["match"] else 1


if __name__ == "__main__":
    sys.exit(main())
