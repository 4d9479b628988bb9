"""Inference benchmark: images/s and peak memory, ours against pyiqa and the official loop, same weights.

    python benchmarks/bench_inference.py                                  # CPU matrix
    python benchmarks/bench_inference.py --device cuda --precisions fp32 tf32 bf16 fp16 \\
        --batch-sizes 1 8 32 64 --count 128 --compile

Rows, all on the same checkpoint and the same images in one process:
- ``official loop``: pyiqa's QualiCLIP arch at temperature 1, one image at a time in fp32. This is
  the official scorer's computation and the reference of every ratio and every score check.
- ``pyiqa built-in``: ``pyiqa.create_metric`` of pyiqa's own QualiCLIP (temperature 2), batched;
  checked against our scores at temperature 2.
- ``standard`` / ``fast`` / ``compiled``: ``QualiCLIP`` in each inference mode and precision.
- ``openvino`` / ``onnxruntime``: ``QualiCLIP(backend=...)``, the whole score run by that runtime
  (onnxruntime in fp32 only); the seconds of their first conversion and compilation are reported.

FLOP counts are those of direct convolution: a backend that uses Winograd's algorithm (OpenVINO's
fp32 3x3 convolutions) does fewer multiplications, so its "of ceiling" can pass 100%.

Images are CLIVE photographs (``../shared/data``) resized to each size, or random images without
them. A score mismatch above the tolerance of a row's mode invalidates its speed figure; the exit code
is 1 when any row is invalid. Peak memory is the rise of the process's peak resident set size (CPU)
or of the allocator's peak (CUDA) during the measurement. ``GFLOP/s`` counts the convolutions and
matrix products of one forward pass (``torch.utils.flop_counter``); the ceiling is the best of a large
matrix product and a large 3x3 convolution in the same precision, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from common import (
    CLIVE,
    ROOT,
    call_seconds,
    machine,
    peak_memory_mib,
    pyiqa_downloads_from,
    pyiqa_model,
    random_official_checkpoint,
    reset_peak_memory,
    synchronize,
    write_result,
)

from qualiclip_metric import QualiCLIP, load_image
from qualiclip_metric.checkpoint import read_checkpoint, write_layout
from qualiclip_metric.precision import PRECISIONS

#: Largest score difference to the official loop that keeps a row valid, by mode and precision.
TOLERANCES = {
    ("official loop", "fp32"): 0.0,
    ("standard", "fp32"): 1e-5,
    ("fast", "fp32"): 5e-5,  # channels-last convolutions sum in another order
    ("compiled", "fp32"): 5e-5,
    ("pyiqa built-in", "fp32"): 1e-5,
    ("openvino", "fp32"): 1e-5,
    ("onnxruntime", "fp32"): 1e-5,
}
BACKEND_MODES = ("openvino", "onnxruntime")
#: Reduced precisions: scores within this of fp32 (the fast-mode target).
REDUCED_TOLERANCE = 2e-3
Scorer = Callable[[torch.Tensor], torch.Tensor]


def parse_size(text: str) -> tuple[int, int]:
    """``500`` or ``1024x768`` (width x height) as (height, width)."""
    width, _, height = text.partition("x")
    return int(height or width), int(width)


def load_images(folder: Path | None, count: int) -> tuple[torch.Tensor, str]:
    """``count`` real 500 x 500 photographs, or random images when the folder is missing."""
    if folder is not None and folder.is_dir():
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".bmp"})
        tensors = [t for t in (load_image(p) for p in files[: 2 * count]) if tuple(t.shape[-2:]) == (500, 500)]
        if len(tensors) >= count:
            return torch.stack(tensors[:count]), f"{folder} ({count} images)"
    generator = torch.Generator().manual_seed(0)
    return torch.rand(count, 3, 500, 500, generator=generator), f"random ({count} images)"


def resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(images.shape[-2:]) == size:
        return images
    return F.interpolate(images, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)


def throughput(fn: Scorer, images: torch.Tensor, batch_size: int, device: torch.device) -> tuple[float, torch.Tensor]:
    """(images/s, scores) of ``fn`` over ``images`` in batches, after one warm-up batch."""
    with torch.inference_mode():
        fn(images[:batch_size].to(device))
        synchronize(device)
        outputs = []
        start = time.perf_counter()
        for first in range(0, len(images), batch_size):
            batch = images[first : first + batch_size].to(device, non_blocking=True)
            outputs.append(fn(batch).float().flatten().cpu())
        synchronize(device)
        elapsed = time.perf_counter() - start
    return len(images) / elapsed, torch.cat(outputs)


def peak_memory(fn: Scorer, images: torch.Tensor, batch_size: int, device: torch.device) -> float:
    """MiB that one batch adds to the process at its peak (activations and workspace, not weights)."""
    batch = images[:batch_size].to(device)
    with torch.inference_mode():
        fn(batch)  # allocations made once (compiled code, oneDNN primitives) are not counted
        baseline = reset_peak_memory(device)
        fn(batch)
        return peak_memory_mib(device, baseline)


def return_freed_memory_to_the_system() -> None:
    """Make glibc unmap every large block when it is freed, so the resident set follows live tensors.

    By default glibc raises its mmap threshold after large frees and keeps the memory, which would
    hide a configuration's peak behind the one measured before it. Called before the memory pass only,
    since it slows allocation.
    """
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
    libc.malloc_trim(0)


def forward_flops(model: QualiCLIP, size: tuple[int, int], device: torch.device) -> int:
    """Floating-point operations of one image's forward pass (convolutions and matrix products)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(torch.rand(1, 3, *size, device=device))
    return counter.get_total_flops()


def ceiling_gflops(dtype: torch.dtype, device: torch.device, repeats: int = 5) -> float:
    """Best of a large matrix product and a large 3x3 convolution, in GFLOP/s."""
    side = 4096 if device.type == "cuda" else 2048
    a = torch.randn(side, side, device=device).to(dtype)
    batch = 64 if device.type == "cuda" else 2
    x = torch.randn(batch, 256, 56, 56, device=device).to(dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(256, 256, 3, 3, device=device).to(dtype).contiguous(memory_format=torch.channels_last)
    candidates = {
        "matmul": (lambda: a @ a, 2 * side**3),
        "conv3x3": (lambda: F.conv2d(x, w, padding=1), 2 * batch * 256 * 256 * 9 * 56 * 56),
    }
    with torch.inference_mode():
        return max(flops / min(call_seconds(fn, repeats, device)) / 1e9 for fn, flops in candidates.values())


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a.numpy(), b.numpy()).statistic)


class Scorers:
    """Every implementation and configuration the benchmark measures, built once on one checkpoint."""

    def __init__(self, args: argparse.Namespace, pth: Path, layout: Path, device: torch.device) -> None:
        self.args = args
        self.modes = list(args.modes) + (["compiled"] if args.compile else [])
        if device.type != "cpu":  # the non-torch backends run on the CPU only
            self.modes = [mode for mode in self.modes if mode not in BACKEND_MODES]
        self.official = pyiqa_model(pth, temperature=1.0).to(device)
        self.builtin = None
        if not args.no_pyiqa_builtin:
            import pyiqa

            from qualiclip_metric.pyiqa_plugin import PYIQA_BUILTIN_NAME

            with pyiqa_downloads_from(pth):
                self.builtin = pyiqa.create_metric(PYIQA_BUILTIN_NAME, device=device)
        self.models = {  # one model per mode and precision: no fused trunk is rebuilt between rounds
            (mode, precision): QualiCLIP.from_pretrained(
                layout, device=device, precision=precision, fast=mode == "fast", compiled=mode == "compiled"
            )
            for mode in self.modes
            if mode not in BACKEND_MODES
            for precision in args.precisions
        }
        #: Seconds of a backend's first use: conversion (unless cached) and compilation.
        self.first_use_seconds: dict[str, float] = {}
        for mode in self.modes:
            for precision in self.precisions(mode) if mode in BACKEND_MODES else []:
                model = QualiCLIP.from_pretrained(layout, precision=precision, backend=mode)
                start = time.perf_counter()
                with torch.inference_mode():
                    model(torch.rand(1, 3, 64, 64))
                self.first_use_seconds[f"{mode} {precision}"] = time.perf_counter() - start
                self.models[(mode, precision)] = model
        # pyiqa's defaults, to check its built-in metric: temperature 2 and the checkpoint's logit scale.
        self.pyiqa_defaults = QualiCLIP.from_pretrained(layout, device=device, temperature=2.0)
        self.pyiqa_defaults.set_score_logit_scale(float(self.pyiqa_defaults.logit_scale.exp()))

    def precisions(self, mode: str) -> list[str]:
        if mode in BACKEND_MODES:
            from qualiclip_metric.runtimes import backend_precisions

            return [p for p in self.args.precisions if p in backend_precisions(mode)]
        return list(self.args.precisions)

    def configs(self) -> list[tuple[str, str, int]]:
        """(implementation, precision, batch size) of every row of one image size."""
        configs = [("official loop", "fp32", 1)]
        configs += [(m, p, b) for m in self.modes for p in self.precisions(m) for b in self.args.batch_sizes]
        if self.builtin is not None:
            configs += [("pyiqa built-in", "fp32", b) for b in self.args.batch_sizes]
        return configs

    def __call__(self, implementation: str, precision: str) -> Scorer:
        if implementation == "official loop":
            return self.official
        if implementation == "pyiqa built-in":
            return self.builtin
        return self.models[(implementation, precision)]


def memory_pass(scorers: Scorers, photos: torch.Tensor, sizes: list[tuple[int, int]], device: torch.device) -> dict:
    """Peak MiB of every row, keyed ``size|implementation|precision|batch``."""
    return_freed_memory_to_the_system()
    peaks = {}
    for height, width in sizes:
        images = resize(photos, (height, width))
        for implementation, precision, batch in scorers.configs():
            key = f"{width}x{height}|{implementation}|{precision}|{batch}"
            peaks[key] = peak_memory(scorers(implementation, precision), images, batch, device)
    return peaks


def measure_memory_in_a_child(pth: Path) -> dict:
    """Run the memory pass in a fresh process, whose allocator has not been shaped by the speed pass."""
    command = [sys.executable, __file__, *sys.argv[1:], "--weights", str(pth), "--memory-pass"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"memory pass failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, help="official/pyiqa .pth (default: random weights)")
    parser.add_argument("--images", type=Path, default=CLIVE, help="folder of 500 x 500 images (default: CLIVE)")
    parser.add_argument("--sizes", nargs="+", default=["224", "500", "1024x768"], help="WIDTHxHEIGHT or SIDE")
    parser.add_argument("--count", type=int, default=8, help="images per measurement (default 8)")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per row; the median is reported")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=sorted(PRECISIONS))
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["standard", "fast", "openvino", "onnxruntime"],
        choices=["standard", "fast", *BACKEND_MODES],
    )
    parser.add_argument("--compile", action="store_true", help="also measure the compiled mode (slow to build)")
    parser.add_argument("--no-pyiqa-builtin", action="store_true", help="skip pyiqa's create_metric rows")
    parser.add_argument("--output", type=Path, help="JSON results (default: results/inference_<device>.json)")
    parser.add_argument("--memory-pass", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    device = torch.device(args.device)
    output = args.output or ROOT / "results" / f"inference_{device.type}.json"
    sizes = [parse_size(text) for text in args.sizes]
    photos, image_source = load_images(args.images, args.count)

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        pth = args.weights or random_official_checkpoint(tmp_path)
        layout = write_layout(read_checkpoint(pth, need_text=False), tmp_path / "layout")
        scorers = Scorers(args, pth, layout, device)
        if args.memory_pass:
            print(json.dumps(memory_pass(scorers, photos, sizes, device)))
            return 0
        ceilings = {p: ceiling_gflops(PRECISIONS[p] or torch.float32, device) for p in args.precisions}
        rows: list[dict[str, object]] = []
        compile_seconds: dict[str, float] = {}
        for height, width in sizes:
            size_name = f"{width}x{height}"
            images = resize(photos, (height, width))
            flops = forward_flops(scorers.pyiqa_defaults, (height, width), device)
            configs = scorers.configs()
            for precision in args.precisions if "compiled" in scorers.modes else []:
                start = time.perf_counter()  # compiling happens once per size, outside the timing
                with torch.inference_mode():
                    scorers("compiled", precision)(images[:1].to(device))
                compile_seconds[f"{size_name} {precision}"] = time.perf_counter() - start
            rates: dict[tuple, list[float]] = {config: [] for config in configs}
            scores: dict[tuple, torch.Tensor] = {}
            for _ in range(args.rounds):  # rounds interleave the configurations, so drift hits all alike
                for config in configs:
                    rate, config_scores = throughput(scorers(*config[:2]), images, config[2], device)
                    rates[config].append(rate)
                    scores.setdefault(config, config_scores)
            _, pyiqa_expected = throughput(scorers.pyiqa_defaults, images, 1, device)
            reference = scores[configs[0]]
            base_rate = statistics.median(rates[configs[0]])
            for config in configs:
                implementation, precision, batch = config
                expected = pyiqa_expected if implementation == "pyiqa built-in" else reference
                diff = (scores[config] - expected).abs().max().item()
                extra: dict[str, object] = {}
                if precision in ("fp32", "tf32"):
                    extra["valid"] = precision == "tf32" or diff <= TOLERANCES.get((implementation, "fp32"), 0.0)
                else:
                    extra["valid"] = diff <= REDUCED_TOLERANCE
                    extra["srcc_vs_fp32"] = spearman(scores[config], reference)
                rate = statistics.median(rates[config])
                gflops = flops * rate / 1e9
                rows.append(
                    {
                        "size": size_name,
                        "gflop_per_image": flops / 1e9,
                        "implementation": implementation,
                        "precision": precision,
                        "batch_size": batch,
                        "images_per_s": rate,
                        "all_images_per_s": rates[config],
                        "vs_official_loop": rate / base_rate,
                        "gflop_per_s": gflops,
                        "fraction_of_ceiling": gflops / ceilings.get(precision, ceilings.get("fp32", gflops)),
                        "max_abs_diff": diff,
                        **extra,
                    }
                )
        scorers_first_use = scorers.first_use_seconds
        del scorers
        peaks = measure_memory_in_a_child(pth)
    for r in rows:
        r["peak_memory_mib"] = peaks[f"{r['size']}|{r['implementation']}|{r['precision']}|{r['batch_size']}"]
    for height, width in sizes:
        print_size(f"{width}x{height}", rows)

    valid = all(r["valid"] for r in rows)
    print("\nceilings (GFLOP/s): " + ", ".join(f"{p} {c:.0f}" for p, c in ceilings.items()))
    if compile_seconds:
        print("compile seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in compile_seconds.items()))
    if scorers_first_use:
        print("backend first use (s): " + ", ".join(f"{k} {v:.1f}" for k, v in scorers_first_use.items()))
    print(f"all rows within tolerance: {'yes' if valid else 'NO: invalid rows are marked'}")
    result = {
        "benchmark": "inference",
        "machine": machine(device),
        "images": image_source,
        "weights": "random (calibrated BatchNorm)" if args.weights is None else str(args.weights),
        "rounds": args.rounds,
        "ceilings_gflop_per_s": ceilings,
        "compile_seconds": compile_seconds,
        "backend_first_use_seconds": scorers_first_use,
        "tolerances": {"fp32": {" ".join(k): v for k, v in TOLERANCES.items()}, "reduced": REDUCED_TOLERANCE},
        "rows": rows,
        "valid": valid,
    }
    return write_result(output, result, valid)


def print_size(size_name: str, rows: list[dict[str, object]]) -> None:
    size_rows = [r for r in rows if r["size"] == size_name]
    print(f"\n{size_name}: {size_rows[0]['gflop_per_image']:.1f} GFLOP per image")
    header = f"{'implementation':<16} {'precision':<9} {'batch':>5} {'images/s':>9} {'vs loop':>8} {'peak MiB':>9}"
    print(header + f" {'of ceiling':>10} {'max |diff|':>10}")
    for r in size_rows:
        flag = "" if r["valid"] else "  INVALID"
        print(
            f"{r['implementation']:<16} {r['precision']:<9} {r['batch_size']:>5} {r['images_per_s']:>9.2f} "
            f"{r['vs_official_loop']:>7.2f}x {r['peak_memory_mib']:>9.1f} {r['fraction_of_ceiling']:>10.0%} "
            f"{r['max_abs_diff']:>10.1e}{flag}"
        )


if __name__ == "__main__":
    sys.exit(main())
