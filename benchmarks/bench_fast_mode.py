"""The fast mode and the backends on every CLIVE image: speed against the official loop, and agreement
with fp32 scores.

    python benchmarks/bench_fast_mode.py --weights runs/qualiclip-cpu/export/qualiclip.pth
    python benchmarks/bench_fast_mode.py --device cuda --precisions fp32 bf16 fp16 --limit 200 --backends

Every image is decoded once and scored by each implementation in turn (the official loop, pyiqa's arch
at temperature 1 in fp32; the fast mode in each precision; each ``--backends`` entry, default OpenVINO
in fp32 and bf16 and onnxruntime in fp32 where installed, on the CPU only), so drift in the machine's
speed affects all of them alike; the time of each is summed over the images. The official loop's scores are the fp32
reference (the standard path matches them to about 1e-7: bench_inference.py). The fast mode's targets:
scores within 2e-3 of the fp32 scores, and a Spearman correlation with them of at least 0.999.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import CLIVE, ROOT, machine, pyiqa_model, random_official_checkpoint, synchronize, write_result
from scipy.stats import spearmanr
from tqdm import tqdm

from qualiclip_metric import QualiCLIP, load_image
from qualiclip_metric.inputs import collect_image_files
from qualiclip_metric.runtimes import backend_precisions, is_installed

MAX_DIFFERENCE = 2e-3
MIN_SRCC = 0.999


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, help="official/pyiqa .pth (default: random weights)")
    parser.add_argument("--images", type=Path, default=CLIVE)
    parser.add_argument("--limit", type=int, help="score only the first N images")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], help="fast-mode precisions")
    parser.add_argument(
        "--backends",
        nargs="*",
        default=["openvino:fp32", "openvino:bf16", "onnxruntime:fp32"],
        metavar="BACKEND:PRECISION",
        help="backend rows (default: OpenVINO fp32 and bf16, onnxruntime fp32, where installed and supported)",
    )
    parser.add_argument("--output", type=Path, help="JSON results (default: results/fast_mode_<device>.json)")
    args = parser.parse_args()
    device = torch.device(args.device)
    files = collect_image_files([args.images])[: args.limit]

    with tempfile.TemporaryDirectory() as tmp:
        pth = args.weights or random_official_checkpoint(Path(tmp))
        scorers = {"official loop": pyiqa_model(pth).to(device)}
        for precision in args.precisions:
            scorers[f"fast {precision}"] = QualiCLIP.from_pretrained(pth, device=device, precision=precision, fast=True)
        for entry in args.backends if device.type == "cpu" else []:
            backend, precision = entry.split(":")
            if is_installed(backend) and precision in backend_precisions(backend):
                scorers[f"{backend} {precision}"] = QualiCLIP.from_pretrained(pth, backend=backend, precision=precision)
    seconds = dict.fromkeys(scorers, 0.0)
    scores: dict[str, list[float]] = {name: [] for name in scorers}
    with torch.inference_mode():
        for scorer in scorers.values():  # warm-up at the first image's size
            scorer(load_image(files[0])[None].to(device))
        for path in tqdm(files, desc="CLIVE", dynamic_ncols=True):
            image = load_image(path)[None].to(device)
            for name, scorer in scorers.items():
                synchronize(device)
                start = time.perf_counter()
                score = float(scorer(image).flatten()[0])  # .item() waits for the device
                seconds[name] += time.perf_counter() - start
                scores[name].append(score)

    reference = torch.tensor(scores["official loop"])
    rows = []
    for name in scorers:
        values = torch.tensor(scores[name])
        rows.append(
            {
                "implementation": name,
                "images_per_s": len(files) / seconds[name],
                "vs_official_loop": seconds["official loop"] / seconds[name],
                "max_abs_diff_vs_fp32": (values - reference).abs().max().item(),
                "median_abs_diff_vs_fp32": (values - reference).abs().median().item(),
                "srcc_vs_fp32": float(spearmanr(values.numpy(), reference.numpy()).statistic),
            }
        )
    targets_met = {
        r["implementation"]: r["max_abs_diff_vs_fp32"] <= MAX_DIFFERENCE and r["srcc_vs_fp32"] >= MIN_SRCC for r in rows
    }
    print(f"{len(files)} images from {args.images}, device {device}")
    print(
        f"{'implementation':<18} {'images/s':>9} {'vs loop':>8} {'median |diff|':>14} {'max |diff|':>11} "
        f"{'SRCC vs fp32':>13}"
    )
    for r in rows:
        print(
            f"{r['implementation']:<18} {r['images_per_s']:>9.2f} {r['vs_official_loop']:>7.2f}x "
            f"{r['median_abs_diff_vs_fp32']:>14.1e} {r['max_abs_diff_vs_fp32']:>11.1e} {r['srcc_vs_fp32']:>13.6f}"
        )
    result = {
        "benchmark": "fast mode on CLIVE",
        "machine": machine(device),
        "images": f"{args.images} ({len(files)} images, native resolution)",
        "weights": "random (calibrated BatchNorm)" if args.weights is None else str(args.weights),
        "targets": {"max_abs_diff_vs_fp32": MAX_DIFFERENCE, "min_srcc_vs_fp32": MIN_SRCC},
        "rows": rows,
        "within_targets": targets_met,
        "scores": scores,
        "files": [str(f) for f in files],
    }
    output = args.output or ROOT / "results" / f"fast_mode_{device.type}.json"
    return write_result(output, result, all(targets_met.values()))


if __name__ == "__main__":
    sys.exit(main())
