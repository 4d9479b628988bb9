"""Inference benchmark: weight loading time and images/s against pyiqa's QualiCLIP on the same weights.

    python benchmarks/bench_inference.py                       # CPU, CLIVE images if present
    python benchmarks/bench_inference.py --device cuda --precisions fp32 bf16 fp16

Without ``--weights`` a random-weight checkpoint is generated in the official layout (speed does not
depend on the values). pyiqa's arch runs at temperature 1, which reproduces the official scorer, one
image at a time like the official demo; a score mismatch above the tolerance invalidates the run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import CLIVE, PARITY_TOLERANCE, ROOT, machine, pyiqa_model, random_official_checkpoint, write_result

from qualiclip_metric import QualiCLIP, load_image
from qualiclip_metric.checkpoint import read_checkpoint, write_layout


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(fn, images: torch.Tensor, batch_size: int, device: torch.device) -> tuple[float, torch.Tensor]:
    """Images per second of ``fn`` over ``images`` in batches, after one warm-up batch."""
    with torch.inference_mode():
        fn(images[:batch_size].to(device))
        synchronize(device)
        outputs = []
        start = time.perf_counter()
        for first in range(0, len(images), batch_size):
            outputs.append(fn(images[first : first + batch_size].to(device)).float().flatten().cpu())
        synchronize(device)
        elapsed = time.perf_counter() - start
    return len(images) / elapsed, torch.cat(outputs)


def load_images(folder: Path | None, count: int, size: int) -> tuple[torch.Tensor, str]:
    if folder is not None and folder.is_dir():
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".bmp"})
        tensors = [load_image(p) for p in files]
        same = [t for t in tensors if tuple(t.shape[-2:]) == (size, size)][:count]
        if len(same) == count:
            return torch.stack(same), f"{folder} ({count} images, {size} x {size})"
    generator = torch.Generator().manual_seed(0)
    return torch.rand(count, 3, size, size, generator=generator), f"random ({count} images, {size} x {size})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, help="official/pyiqa .pth (default: random weights)")
    parser.add_argument("--images", type=Path, default=CLIVE, help="folder of images (default: CLIVE)")
    parser.add_argument("--size", type=int, default=500, help="image side (default 500, CLIVE's size)")
    parser.add_argument("--count", type=int, default=16, help="images per measurement (default 16)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--no-pyiqa", action="store_true", help="skip the pyiqa reference")
    parser.add_argument(
        "--output", type=Path, help="JSON results (default: benchmarks/results/inference_<device>.json)"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    output = args.output or ROOT / "results" / f"inference_{device.type}.json"

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        pth = args.weights or random_official_checkpoint(tmp_path)
        layout = write_layout(read_checkpoint(pth, need_text=False), tmp_path / "layout")
        load = {
            "safetensors (sha256 verified)": median_seconds(lambda: QualiCLIP.from_pretrained(layout), 5),
            "safetensors (verify=False)": median_seconds(lambda: QualiCLIP.from_pretrained(layout, verify=False), 5),
            "official .pth": median_seconds(lambda: QualiCLIP.from_pretrained(pth), 5),
        }
        images, image_source = load_images(args.images, args.count, args.size)
        model = QualiCLIP.from_pretrained(layout, device=device)
        rows = []
        reference_rate = None
        reference_scores = None
        if not args.no_pyiqa:
            reference = pyiqa_model(pth).to(device)
            reference_rate, reference_scores = throughput(reference, images, 1, device)
            rows.append(
                {
                    "implementation": "pyiqa arch (T=1), one image at a time",
                    "precision": "fp32",
                    "batch_size": 1,
                    "images_per_s": reference_rate,
                    "max_abs_diff_vs_reference": 0.0,
                }
            )
            del reference
        for precision in args.precisions:
            model.precision = precision
            for batch_size in args.batch_sizes:
                rate, scores = throughput(model, images, batch_size, device)
                diff = (scores - reference_scores).abs().max().item() if reference_scores is not None else None
                rows.append(
                    {
                        "implementation": "qualiclip-metric",
                        "precision": precision,
                        "batch_size": batch_size,
                        "images_per_s": rate,
                        "max_abs_diff_vs_reference": diff,
                    }
                )

    valid = all(
        r["max_abs_diff_vs_reference"] is None
        or r["precision"] != "fp32"
        or r["max_abs_diff_vs_reference"] <= PARITY_TOLERANCE
        for r in rows
    )
    print(f"device: {device}  images: {image_source}  torch threads: {torch.get_num_threads()}")
    print("\nweight loading (median of 5, seconds)")
    for name, seconds in load.items():
        print(f"  {name:<32} {seconds:7.3f}   x{seconds / load['official .pth']:.2f} of .pth")
    print(f"\n{'implementation':<40} {'precision':<9} {'batch':>5} {'images/s':>9} {'vs pyiqa':>9} {'max |diff|':>11}")
    for r in rows:
        ratio = f"x{r['images_per_s'] / reference_rate:.2f}" if reference_rate else "-"
        diff = "-" if r["max_abs_diff_vs_reference"] is None else f"{r['max_abs_diff_vs_reference']:.2e}"
        print(
            f"{r['implementation']:<40} {r['precision']:<9} {r['batch_size']:>5} {r['images_per_s']:>9.2f} "
            f"{ratio:>9} {diff:>11}"
        )
    print(f"\nfp32 parity within {PARITY_TOLERANCE:g}: {'yes' if valid else 'NO: speed figures are invalid'}")

    result = {
        "benchmark": "inference",
        "machine": machine(device),
        "images": image_source,
        "weights": "random" if args.weights is None else str(args.weights),
        "load_seconds": load,
        "throughput": rows,
        "fp32_parity_valid": valid,
    }
    return write_result(output, result, valid)


if __name__ == "__main__":
    sys.exit(main())
