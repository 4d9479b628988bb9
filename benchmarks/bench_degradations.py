"""Degradation-bank benchmark: degraded crops per second for each of the 24 distortions, and a PSNR table.

    python benchmarks/bench_degradations.py                   # CPU, batch 16 x 3 x 224 x 224, level 3
    python benchmarks/bench_degradations.py --device cuda
    python benchmarks/bench_degradations.py --psnr            # ours vs a NumPy reading of ARNIQA, per cell

``--psnr`` degrades 12 Kodak crops (224 x 224, one per image 01-12) with every distortion at every level,
once with ``training.degradations`` and once with the independent NumPy reading of ARNIQA's code in
``tests/arniqa_reference.py`` (its own random numbers), and prints the mean PSNR against the pristine crop
of both, the mean paired difference and its standard error (random distortions differ draw by draw;
deterministic ones should agree to rounding). Results go to ``results/degradations_psnr.json``.

The crops are random 224 x 224 crops of the Kodak images in ../shared/data when present (JPEG speed depends
on content), otherwise smooth random images with noise. Each distortion runs once to warm up, then the median
of ``--repeats`` timed batches is reported; on CUDA, ``cpu_only`` distortions include the copies to the CPU
and back. Training degrades on the fly, so this is the per-step cost of the degradation stage.
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import ROOT, call_seconds, machine, write_result
from PIL import Image

sys.path.insert(0, str(ROOT.parent / "tests"))
from arniqa_reference import RANDOM, arniqa_reference  # noqa: E402

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


def psnr(degraded: np.ndarray, pristine: np.ndarray) -> float:
    """PSNR in dB for data range 1, capped at 100 dB (identical images)."""
    mse = float(np.mean((degraded - pristine) ** 2))
    return 100.0 if mse <= 1e-10 else min(100.0, 10 * math.log10(1.0 / mse))


def psnr_table(crops: torch.Tensor, variant: str, draws: int = 1) -> dict[str, list[dict[str, float]]]:
    """Per distortion, per level: mean PSNR of ours and of the reference, paired difference and its SE.

    Random distortions get ``draws`` seeds per crop (pairs: crops x draws); deterministic ones one.
    """
    from training.degradations import DISTORTIONS, degrade

    table: dict[str, list[dict[str, float]]] = {}
    pristine = crops.double().numpy()
    for name, distortion in DISTORTIONS.items():
        row = []
        for level, parameter in enumerate(distortion.levels, start=1):
            ours, theirs = [], []
            seeds = range(draws if name in RANDOM else 1)
            for index, draw in ((i, d) for i in range(crops.shape[0]) for d in seeds):
                seed = 100000 * draw + 1000 * level + index
                mine = degrade(crops[index : index + 1], name, level, torch.Generator().manual_seed(seed), variant)
                ours.append(psnr(mine[0].double().numpy(), pristine[index]))
                reference = arniqa_reference(name, pristine[index], parameter, np.random.default_rng(seed))
                theirs.append(psnr(reference, pristine[index]))
            difference = np.array(ours) - np.array(theirs)
            row.append(
                {
                    "parameter": parameter,
                    "pairs": len(difference),
                    "ours_db": float(np.mean(ours)),
                    "reference_db": float(np.mean(theirs)),
                    "difference_db": float(difference.mean()),
                    "difference_se_db": float(difference.std(ddof=1) / math.sqrt(len(difference))),
                }
            )
        table[name] = row
        print(
            f"| {name} | "
            + " | ".join(f"{c['ours_db']:.2f} / {c['reference_db']:.2f} ({c['difference_db']:+.2f})" for c in row)
            + " |",
            flush=True,
        )
    return table


def crops_per_image(folder: Path, count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """One random ``size`` crop from each of the first ``count`` images of ``folder`` (sorted by name)."""
    files = sorted(folder.glob("*.png"))[:count]
    if len(files) < count:
        raise SystemExit(f"--psnr needs {count} PNG images in {folder}, found {len(files)}")
    crops, _ = load_crops(folder, count, size, generator)
    return crops


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--level", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--images", type=Path, default=KODAK, help="folder of PNG images to crop from")
    parser.add_argument("--output", type=Path)
    parser.add_argument("--psnr", action="store_true", help="the PSNR table against the ARNIQA reference instead")
    parser.add_argument("--variant", default="arniqa", help="degradation variant for --psnr (arniqa or kadid)")
    parser.add_argument("--draws", type=int, default=1, help="--psnr: seeds per crop for the random distortions")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT.parent))  # the training package lives at the repository root
    from training.degradations import DISTORTIONS, degrade

    device = torch.device(args.device)
    if args.psnr:
        crops = crops_per_image(args.images, 12, args.size, torch.Generator().manual_seed(0))
        print(
            f"12 Kodak crops {args.size} x {args.size} ({args.draws} draws each for random distortions), "
            f"variant {args.variant}; cells: ours / ARNIQA reference (mean paired difference), dB"
        )
        print("| distortion | level 1 | level 2 | level 3 | level 4 | level 5 |")
        print("|---|---|---|---|---|---|")
        table = psnr_table(crops, args.variant, args.draws)
        result = {
            "benchmark": "degradation bank PSNR against a NumPy reading of ARNIQA",
            "machine": machine(torch.device("cpu")),
            "variant": args.variant,
            "crops": f"Kodak 01-12, one random {args.size} x {args.size} crop each (seed 0)",
            "draws_per_crop_of_random_distortions": args.draws,
            "seeds": "ours: torch.Generator().manual_seed(100000 * draw + 1000 * level + crop); "
            "reference: numpy default_rng(same)",
            "psnr_cap_db": 100.0,
            "results": table,
        }
        return write_result(args.output or ROOT / "results" / f"degradations_psnr_{args.variant}.json", result, True)
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
