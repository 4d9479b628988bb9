"""The batch scorer end to end on JPEG files: the official one-image loop against the pipeline.

    python benchmarks/bench_gpu_pipeline.py --device cpu --limit 32      # minutes on a small CPU
    python benchmarks/bench_gpu_pipeline.py --device cuda                # every CLIVE image, one GPU

Rows, on the same weights and files in one process, each timed from the file names to the scores:

- ``official loop``: the official scorer's computation, one image at a time in fp32: Pillow decodes
  (``Image.open(path).convert("RGB")``, ``ToTensor``), pyiqa's QualiCLIP arch at temperature 1 scores
  (where pyiqa is not installed, the package's standard path, which the tests hold to pyiqa's to 1e-7).
  The reference of every ratio and every score check.
- ``pipeline fp32 / decode cpu``: :func:`qualiclip_metric.batch.score_files`, Pillow decoding in the
  reader processes, the fast trunk in fp32. Its scores must match the official loop's to 5e-5 (the
  fast mode's fp32 tolerance), or the run is invalid (exit code 1).
- ``pipeline fp32 / decode cuda`` (CUDA): nvJPEG decoding; its difference to the row above is what
  GPU decoding alone changes.
- ``pipeline bf16 / decode cuda`` (``decode cpu`` on the CPU): the fast bf16 path, the fastest
  configuration; ``pipeline bf16 / decode cpu`` on CUDA too, to weigh the decoders.

The passes are repeated over the file list (``--repeat``, default 8 on CUDA) so that each lasts
seconds; a first, untimed pass over the same list warms cuDNN's autotuner (``cudnn.benchmark``) for
every batch shape the timed one meets. Reported: images/s, ratio to the official loop, largest and
median score difference to it, SRCC against its fp32 scores (target >= 0.999 for bf16), the fraction
of a measured bf16 channels-last 3x3 convolution's throughput that the trunk reaches (trunk FLOPs of
the actual image sizes counted by ``torch.utils.flop_counter``), and, from a separate instrumented pass
(``PipelineStats(timed=True)``, each stage waiting for the device), where the time goes. On CUDA the
decoders are also compared pixel by pixel (nvJPEG against Pillow).

Images: the CLIVE JPEGs (``../shared/data/clive/images``, or ``shared/data/clive/images`` inside the
checkout as on the GPU machine), or ``--images DIR``; without any, generated JPEGs of the same size.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import CLIVE, ROOT, machine, random_official_checkpoint, synchronize, write_result
from PIL import Image
from scipy.stats import spearmanr

from qualiclip_metric import QualiCLIP, load_image
from qualiclip_metric.batch import PipelineStats, score_files
from qualiclip_metric.inputs import collect_image_files
from qualiclip_metric.precision import cuda_tf32

#: fp32 rows (fast trunk, Pillow decode) must match the official loop to this (bench_inference's fast fp32).
FP32_TOLERANCE = 5e-5
MIN_SRCC = 0.999
TARGET_RATIO = 10.0
TARGET_IMAGES_PER_S = 2500.0
IN_CHECKOUT = ROOT.parent / "shared" / "data" / "clive" / "images"


def find_images(folder: Path | None, limit: int | None, scratch: Path) -> tuple[list[Path], str]:
    """The JPEG files to score, and where they came from."""
    for candidate in [folder] if folder is not None else [IN_CHECKOUT, CLIVE]:
        if candidate is not None and candidate.is_dir():
            files = collect_image_files([candidate])[:limit]
            if files:
                return files, f"{candidate} ({len(files)} files)"
        if folder is not None:
            raise SystemExit(f"bench_gpu_pipeline: no images in {folder}")
    sys.path.insert(0, str(ROOT.parent / "tests"))
    from random_clip import make_images

    count = limit or 627
    files = []
    for index in range(count):
        image = make_images(1, 500, 500, seed=index)[0].permute(1, 2, 0).mul(255).round().byte().numpy()
        files.append(scratch / f"generated_{index:04d}.jpg")
        Image.fromarray(image).save(files[-1], quality=90)
    return files, f"generated 500 x 500 JPEGs, quality 90 ({count} files)"


def official_scorer(pth: Path, device: torch.device) -> tuple[torch.nn.Module, str]:
    """pyiqa's arch at temperature 1 where pyiqa is installed, else the package's standard fp32 path."""
    try:
        import pyiqa.archs.qualiclip_arch  # noqa: F401
    except ImportError:
        model = QualiCLIP.from_pretrained(pth, device=device, precision="fp32")
        return model, "QualiCLIP standard path, fp32 (pyiqa is not installed here)"
    from common import pyiqa_model

    return pyiqa_model(pth, temperature=1.0).to(device), "pyiqa's QualiCLIP arch, temperature 1, fp32"


def official_loop(
    scorer: torch.nn.Module, files: list[Path], warm: list[Path], device: torch.device
) -> tuple[list[float], float]:
    """Scores and seconds of the official one-image loop: Pillow, ToTensor, the network, ``.item()``.

    ``warm`` (a file of each size) is scored first, untimed. TF32 stays off: fp32 is IEEE fp32.
    """

    def score(path: Path) -> float:
        with Image.open(path) as image:
            rgb = np.array(image.convert("RGB"))  # a copy, as ToTensor makes
        x = torch.from_numpy(rgb).permute(2, 0, 1).float().div(255)[None].to(device)  # ToTensor
        return float(scorer(x).flatten()[0])

    with torch.inference_mode(), cuda_tf32(False):
        for path in warm:
            score(path)
        synchronize(device)
        start = time.perf_counter()
        scores = [score(path) for path in files]
        synchronize(device)
    return scores, time.perf_counter() - start


def pipeline_pass(model: QualiCLIP, files: list[Path], args: argparse.Namespace, decode: str, stats=None) -> tuple:
    """(scores in input order, seconds of the whole pass); a failed file stops the benchmark."""
    synchronize(model.device)
    start = time.perf_counter()
    results = list(
        score_files(files, model, batch_size=args.batch_size, workers=args.workers, decode=decode, stats=stats)
    )
    synchronize(model.device)
    seconds = time.perf_counter() - start
    errors = [r.error for r in results if not r.ok]
    if errors:
        raise SystemExit(f"bench_gpu_pipeline: {len(errors)} files failed, e.g. {errors[0]}")
    return [r.score for r in results], seconds


def conv_ceiling_tflops(device: torch.device, repeats: int = 5) -> float:
    """TFLOP/s of a large bf16 channels-last 3x3 convolution (256 to 256 channels at 56 x 56), best of ``repeats``."""
    batch, calls = (128, 20) if device.type == "cuda" else (2, 1)
    layout = torch.channels_last
    x = torch.randn(batch, 256, 56, 56, device=device, dtype=torch.bfloat16).contiguous(memory_format=layout)
    w = torch.randn(256, 256, 3, 3, device=device, dtype=torch.bfloat16).contiguous(memory_format=layout)
    flops = 2 * batch * 256 * 256 * 9 * 56 * 56 * calls
    with torch.inference_mode():
        for _ in range(3):
            F.conv2d(x, w, padding=1)
        best = float("inf")
        for _ in range(repeats):
            synchronize(device)
            start = time.perf_counter()
            for _ in range(calls):
                F.conv2d(x, w, padding=1)
            synchronize(device)
            best = min(best, time.perf_counter() - start)
    return flops / best / 1e12


def image_sizes(files: list[Path]) -> dict[tuple[int, int], list[Path]]:
    """The files by their (height, width), read from their headers."""
    sizes: dict[tuple[int, int], list[Path]] = {}
    for path in files:
        with Image.open(path) as image:
            sizes.setdefault(image.size[::-1], []).append(path)
    return sizes


def trunk_flops(sizes: dict[tuple[int, int], list[Path]]) -> int:
    """FLOPs of the RN50 trunk's convolutions over every file at its own size (counted on the meta device)."""
    from torch.utils.flop_counter import FlopCounterMode

    from qualiclip_metric.model import build_image_tower

    with torch.device("meta"):
        tower = build_image_tower()
    total = 0
    for (height, width), paths in sizes.items():
        counter = FlopCounterMode(display=False)
        with torch.inference_mode(), counter:
            tower.trunk(torch.zeros(1, 3, height, width, device="meta"))
        total += len(paths) * counter.get_total_flops()
    return total


def decoder_pixels(files: list[Path], device: torch.device) -> dict[str, float]:
    """nvJPEG against Pillow, pixel by pixel over ``files``: the largest and mean level difference."""
    from qualiclip_metric.batch import _decode_jpegs, gpu_jpeg_frame

    largest, total, differing, count = 0, 0.0, 0, 0
    for path in files:
        data = bytearray(path.read_bytes())
        if gpu_jpeg_frame(data) is None:
            continue
        gpu = _decode_jpegs([data], device)[0].cpu().int()
        cpu = (load_image(path) * 255).round().int()
        if gpu.shape != cpu.shape:
            continue  # EXIF orientation; the pipeline applies it, this comparison does not
        difference = (gpu - cpu).abs()
        largest = max(largest, int(difference.max()))
        total += float(difference.sum())
        differing += int((difference > 0).sum())
        count += difference.numel()
    return {
        "max_level_difference": largest,
        "mean_level_difference": total / max(count, 1),
        "fraction_of_values_differing": differing / max(count, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=Path, help="folder of JPEG files (default: CLIVE)")
    parser.add_argument("--limit", type=int, help="score only the first N files")
    parser.add_argument("--repeat", type=int, help="passes over the files per measurement (default 8 CUDA, 1 CPU)")
    parser.add_argument("--batch-size", type=int, help="default 64 on CUDA, 1 on the CPU (the CLI's choice there)")
    parser.add_argument("--workers", type=int, help="reader processes (default 12 on CUDA, 1 on the CPU)")
    parser.add_argument("--weights", type=Path, help="official/pyiqa .pth (default: random weights)")
    parser.add_argument("--compile", action="store_true", help="also a bf16 row with compiled=True (slow to build)")
    parser.add_argument("--output", type=Path, help="JSON results (default: results/gpu_pipeline_<device>.json)")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    args.repeat = args.repeat or (8 if cuda else 1)
    args.batch_size = args.batch_size or (64 if cuda else 1)
    args.workers = args.workers if args.workers is not None else (12 if cuda else 1)
    output = args.output or ROOT / "results" / f"gpu_pipeline_{device.type}.json"
    if cuda:
        torch.backends.cudnn.benchmark = True  # fixed bucket shapes: let cuDNN pick its kernels once per shape

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        files, image_source = find_images(args.images, args.limit, Path(tmp))
        pth = args.weights or random_official_checkpoint(Path(tmp))
        reference, reference_name = official_scorer(pth, device)
        models = {
            "fp32": QualiCLIP.from_pretrained(pth, device=device, precision="fp32", fast=True),
            "bf16": QualiCLIP.from_pretrained(pth, device=device, precision="bf16", fast=True),
        }
        if args.compile:
            models["bf16 compiled"] = QualiCLIP.from_pretrained(pth, device=device, precision="bf16", compiled=True)
        build_seconds = time.perf_counter() - started

        sizes = image_sizes(files)
        official_scores, official_seconds = official_loop(reference, files, [p[0] for p in sizes.values()], device)
        del reference
        base_rate = len(files) / official_seconds
        unique_flops = trunk_flops(sizes)
        configurations = [("fp32", "cpu")] + ([("fp32", "cuda")] if cuda else [])
        configurations += [("bf16", "cuda" if cuda else "cpu")] + ([("bf16", "cpu")] if cuda else [])
        configurations += [("bf16 compiled", "cuda" if cuda else "cpu")] if args.compile else []
        rows, warm_up_seconds, decode_counts = [], {}, {}
        scores_by_row: dict[str, list[float]] = {}
        for precision, decode in configurations:
            name = f"pipeline {precision} / decode {decode}"
            model = models[precision]
            repeat = args.repeat if precision != "fp32" else max(1, args.repeat // 4)  # fp32 is slow: fewer passes
            passes = files * repeat
            warm = passes if cuda else files[: args.batch_size]
            start = time.perf_counter()
            pipeline_pass(model, warm, args, decode)
            warm_up_seconds[name] = time.perf_counter() - start
            stats = PipelineStats()
            scores, seconds = pipeline_pass(model, passes, args, decode, stats)
            decode_counts[name] = {"gpu_decoded": stats.gpu_decoded, "cpu_decoded": stats.cpu_decoded}
            scores = scores[: len(files)]
            scores_by_row[name] = scores
            rate = len(passes) / seconds
            difference = (torch.tensor(scores) - torch.tensor(official_scores)).abs()
            rows.append(
                {
                    "implementation": name,
                    "precision": precision,
                    "decode": decode,
                    "batch_size": args.batch_size,
                    "workers": args.workers,
                    "images": len(passes),
                    "repeat": repeat,
                    "seconds": seconds,
                    "images_per_s": rate,
                    "vs_official_loop": rate / base_rate,
                    "max_abs_diff_vs_official": difference.max().item(),
                    "median_abs_diff_vs_official": difference.median().item(),
                    "srcc_vs_official": float(spearmanr(scores, official_scores).statistic),
                }
            )

        fastest = max(rows, key=lambda r: r["images_per_s"])
        instrumented = PipelineStats(timed=True)
        pipeline_pass(models[fastest["precision"]], files, args, fastest["decode"], instrumented)
        ceiling = conv_ceiling_tflops(device)
        pixels = decoder_pixels(files, device) if cuda else None

    for row in rows:
        row["trunk_tflop_per_s"] = unique_flops * row["repeat"] / row["seconds"] / 1e12
        row["fraction_of_conv_ceiling"] = row["trunk_tflop_per_s"] / ceiling
    reference_row = rows[0]
    valid = reference_row["max_abs_diff_vs_official"] <= FP32_TOLERANCE
    decode_effect = {}
    for precision in ("fp32", "bf16"):
        gpu, cpu = f"pipeline {precision} / decode cuda", f"pipeline {precision} / decode cpu"
        if gpu in scores_by_row and cpu in scores_by_row:
            difference = (torch.tensor(scores_by_row[gpu]) - torch.tensor(scores_by_row[cpu])).abs()
            decode_effect[precision] = {
                "max_abs_score_diff": difference.max().item(),
                "median_abs_score_diff": difference.median().item(),
                "srcc": float(spearmanr(scores_by_row[gpu], scores_by_row[cpu]).statistic),
            }
    bf16_rows = [r for r in rows if r["precision"] == "bf16"]
    best_bf16 = max(bf16_rows, key=lambda r: r["images_per_s"])
    targets = {
        f"bf16 >= {TARGET_RATIO:g}x the official loop": best_bf16["vs_official_loop"] >= TARGET_RATIO,
        f"bf16 >= {TARGET_IMAGES_PER_S:g} images/s": best_bf16["images_per_s"] >= TARGET_IMAGES_PER_S,
        f"bf16 SRCC vs fp32 >= {MIN_SRCC}": all(r["srcc_vs_official"] >= MIN_SRCC for r in bf16_rows),
    }
    stage_seconds = {k: v for k, v in instrumented.seconds.items()}
    compute_fraction = unique_flops / max(instrumented.seconds["compute"], 1e-9) / 1e12 / ceiling

    print(f"\n{len(files)} files from {image_source}, x{args.repeat} per bf16 pass; device {machine(device)['device']}")
    print(f"official loop ({reference_name}): {base_rate:.1f} images/s")
    per_image = unique_flops / len(files) / 1e9
    print(f"bf16 channels-last 3x3 convolution: {ceiling:.1f} TFLOP/s; trunk {per_image:.1f} GFLOP per image")
    header = f"{'implementation':<30} {'images/s':>9} {'vs loop':>8} {'max |diff|':>10} {'median':>9} {'SRCC':>9}"
    print(header + f" {'of conv':>8}")
    for r in rows:
        print(
            f"{r['implementation']:<30} {r['images_per_s']:>9.1f} {r['vs_official_loop']:>7.1f}x "
            f"{r['max_abs_diff_vs_official']:>10.1e} {r['median_abs_diff_vs_official']:>9.1e} "
            f"{r['srcc_vs_official']:>9.6f} {r['fraction_of_conv_ceiling']:>8.0%}"
        )
    for precision, effect in decode_effect.items():
        print(
            f"nvJPEG vs Pillow decode, {precision}: max |score diff| {effect['max_abs_score_diff']:.1e}, "
            f"median {effect['median_abs_score_diff']:.1e}, SRCC {effect['srcc']:.6f}"
        )
    if pixels is not None:
        print(
            f"nvJPEG vs Pillow pixels: max {pixels['max_level_difference']} levels, mean "
            f"{pixels['mean_level_difference']:.3f}, {pixels['fraction_of_values_differing']:.1%} of values differ"
        )
    wall = instrumented.wall
    print(
        f"where the time goes ({fastest['implementation']}, instrumented, {wall:.2f} s): "
        + ", ".join(f"{k} {v:.2f} s ({v / wall:.0%})" for k, v in stage_seconds.items())
        + f"; the trunk reaches {compute_fraction:.0%} of the convolution's rate while computing"
    )
    print(
        f"model build {build_seconds:.1f} s; warm-up passes "
        + ", ".join(f"{v:.1f} s" for v in warm_up_seconds.values())
    )
    print("targets: " + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in targets.items()))
    parity = "yes" if valid else "NO: the figures are invalid"
    print(f"fp32 parity with the official loop (<= {FP32_TOLERANCE:g}): {parity}")
    result = {
        "benchmark": "gpu pipeline",
        "machine": machine(device),
        "images": image_source,
        "repeat": args.repeat,
        "weights": "random (calibrated BatchNorm)" if args.weights is None else str(args.weights),
        "reference": reference_name,
        "official_loop_images_per_s": base_rate,
        "conv_ceiling_tflop_per_s": ceiling,
        "trunk_gflop_per_image": unique_flops / len(files) / 1e9,
        "rows": rows,
        "decode_counts": decode_counts,
        "nvjpeg_vs_pillow_scores": decode_effect,
        "nvjpeg_vs_pillow_pixels": pixels,
        "stages": {
            "implementation": fastest["implementation"],
            "images": len(files),
            "wall_seconds": wall,
            "seconds": stage_seconds,
            "compute_fraction_of_conv_ceiling": compute_fraction,
        },
        "model_build_seconds": build_seconds,
        "warm_up_seconds": warm_up_seconds,
        "targets": targets,
        "tolerances": {"fp32_vs_official": FP32_TOLERANCE, "min_srcc": MIN_SRCC},
        "valid": valid,
    }
    return write_result(output, result, valid)


if __name__ == "__main__":
    sys.exit(main())
