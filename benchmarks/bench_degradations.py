"""Degradation-bank benchmark: degraded crops per second for each of the 24 distortions.

    python benchmarks/bench_degradations.py                   # CPU, batch 16 x 3 x 224 x 224, level 3
    python benchmarks/bench_degradations.py --device cuda

The crops are random 224 x 224 crops of the Kodak images in ../shared/data when present (JPEG speed depends
on content), otherwise smooth random images with noise. Each distortion runs once to warm up, then the median
of ``--repeats`` timed batches is reported; on CUDA, ``cpu_only`` distortions include the copies to the CPU
and back. Training degrades on the fly, so this is the per-step cost of the degradation stage.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import ROOT, call_seconds, machine, write_result
from PIL import Image

KODAK = ROOT.parent.parent / "shared" / "data" / "pristine" / "kodak"


def load_crops(folder: Path, count: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, str]:
    """``count`` random ``size`` crops, cycling over the images of ``folder``; synthetic images without it."""
    files = sorted(folder.glob("*.png")) if folder.is_dir() else []
    if not files:
        coarse = torch.rand(count, 3, 4, 4, generator=generator)
        smooth = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
        detail = torch.rand(count, 3, size, size, generator=generator) - 0.5
        return (smooth + 0.3 * detail).clamp(0, 1), "synthetic"
    crops = []
    for index in range(count):
        with Image.open(files[index % len(files)]) as image:
            pixels = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)
        top = int(torch.randint(pixels.shape[1] - size + 1, (1,), generator=generator))
        left = int(torch.randint(pixels.shape[2] - size + 1, (1,), generator=generator))
        crops.append(pixels[:, top : top + size, left : left + size].float() / 255.0)
    return torch.stack(crops), f"Kodak ({len(files)} images)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--level", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--images", type=Path, default=KODAK, help="folder of PNG images to crop from")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT.parent))  # the training package lives at the repository root
    from training.degradations import DISTORTIONS, degrade

    device = torch.device(args.device)
    output = args.output or ROOT / "results" / f"degradations_{device.type}.json"
    crops, source = load_crops(args.images, args.batch_size, args.size, torch.Generator().manual_seed(0))
    crops = crops.to(device)

    results = {}
    header = f"{'distortion':<18} {'group':<18} {'parameter':>9} {'runs on':>7} {'ms/batch':>9} {'crops/s':>9}"
    print(f"device: {device}  batch: {args.batch_size} x 3 x {args.size} x {args.size}  level: {args.level}")
    print(f"threads: {torch.get_num_threads()}  crops: {source}")
    print(header)
    print("-" * len(header))
    for name, distortion in DISTORTIONS.items():
        generator = torch.Generator().manual_seed(0)
        seconds = statistics.median(
            call_seconds(functools.partial(degrade, crops, name, args.level, generator), args.repeats, device)
        )
        where = "cpu" if distortion.cpu_only else device.type
        parameter = distortion.levels[args.level - 1]
        results[name] = {
            "group": distortion.group,
            "parameter": parameter,
            "runs_on": where,
            "seconds_per_batch": seconds,
            "crops_per_second": args.batch_size / seconds,
        }
        print(
            f"{name:<18} {distortion.group:<18} {parameter:>9g} {where:>7} {seconds * 1e3:>9.1f} "
            f"{args.batch_size / seconds:>9.1f}"
        )
    total = sum(r["seconds_per_batch"] for r in results.values()) / len(results)
    print(f"mean over distortions: {total * 1e3:.1f} ms/batch, {args.batch_size / total:.1f} crops/s")

    result = {
        "benchmark": "degradation bank",
        "machine": machine(device),
        "batch_shape": [args.batch_size, 3, args.size, args.size],
        "level": args.level,
        "repeats": args.repeats,
        "crops": source,
        "results": results,
        "mean_crops_per_second": args.batch_size / total,
    }
    return write_result(output, result, True)


if __name__ == "__main__":
    sys.exit(main())
