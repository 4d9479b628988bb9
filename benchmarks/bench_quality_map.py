"""Quality maps: seconds per map of a 500 x 500 image, against scoring the same crops one by one.

    python benchmarks/bench_quality_map.py                         # 500 x 500, patch 224, stride 112, CPU
    python benchmarks/bench_quality_map.py --size 1024x768 --chunk-sizes 1 4 16 --device cuda

The image is the first CLIVE photograph (``../shared/data``, 500 x 500) resized to ``--size``, or a random
image without it. The reference, run in the same process on the same weights, is what a user would write
by hand: every window cropped and scored alone by the standard fp32 model (``model(crop)``), in map
order. Each configuration maps the image with ``QualiCLIP.quality_map``; the rows and the reference are
timed in turn, ``--repeats`` rounds after a warm-up call each (medians), so that drift in the machine's
speed affects all alike. A map's promise is that each cell is its model's score of the crop: a cell
farther from the same model's ``model(crop)`` than 1e-5 (fp32) or 2e-3 (bf16) invalidates the row's figure
(exit code 1). The difference to the fp32 reference's crops is reported too (in bf16 it is bf16's own
rounding, amplified by random weights; bench_fast_mode.py measures it on every CLIVE image). Peak memory
is the rise of the process's peak resident set size (CPU) or of the allocator's peak (CUDA) during one
map, after the other rows ran (so the allocator may reuse what they freed).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import (
    CLIVE,
    ROOT,
    machine,
    peak_memory_mib,
    random_official_checkpoint,
    reset_peak_memory,
    synchronize,
    write_result,
)

from qualiclip_metric import QualiCLIP, load_image
from qualiclip_metric.inputs import collect_image_files
from qualiclip_metric.quality_map import window_starts
from qualiclip_metric.runtimes import backend_precisions, is_installed

#: Largest difference of a cell to the same model's score of its crop alone that keeps a row valid.
TOLERANCES = {("torch", False, "fp32"): 1e-5, ("torch", True, "fp32"): 1e-5}
#: The same, in bf16: a batch and a single crop may round differently.
REDUCED_TOLERANCE = 2e-3


def parse_size(text: str) -> tuple[int, int]:
    """``500`` or ``1024x768`` (width x height) as (height, width)."""
    width, _, height = text.partition("x")
    return int(height or width), int(width)


def test_image(size: tuple[int, int]) -> tuple[torch.Tensor, str]:
    files = collect_image_files([CLIVE]) if CLIVE.is_dir() else []
    if files:
        image = load_image(files[0])[None]
        source = f"{files[0].name} from CLIVE"
    else:
        image = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(0))
        source = "random"
    if tuple(image.shape[-2:]) != size:
        image = F.interpolate(image, size=size, mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    return image, f"{source}, {size[1]} x {size[0]}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, help="official/pyiqa .pth (default: random weights)")
    parser.add_argument("--size", type=parse_size, default=(500, 500), help="WIDTHxHEIGHT (default 500)")
    parser.add_argument("--patch", type=int, default=224)
    parser.add_argument("--stride", type=int, default=112)
    parser.add_argument("--chunk-sizes", type=int, nargs="+", default=[1, 4, 16], help="for torch fp32")
    parser.add_argument(
        "--configurations",
        nargs="*",
        default=["torch-fast:fp32", "torch-fast:bf16", "openvino:fp32", "openvino:bf16", "onnxruntime:fp32"],
        metavar="BACKEND:PRECISION",
        help="further rows at the default chunk size (torch-fast: the fused trunk), where installed and supported",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch's (and the backends') threads (default torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path, help="JSON results (default: results/quality_map_<device>.json)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    image, source = test_image(args.size)
    height, width = image.shape[-2:]
    rows, cols = window_starts(height, args.patch, args.stride), window_starts(width, args.patch, args.stride)
    window = (min(args.patch, height), min(args.patch, width))

    with tempfile.TemporaryDirectory() as tmp:
        pth = args.weights or random_official_checkpoint(Path(tmp))
        reference = QualiCLIP.from_pretrained(pth, device=device)
        models = {}
        for chunk in args.chunk_sizes:
            models[f"torch fp32, chunks of {chunk}"] = (reference, chunk, TOLERANCES["torch", False, "fp32"])
        for entry in args.configurations:
            backend, precision = entry.split(":")
            fast = backend == "torch-fast"
            backend = "torch" if fast else backend
            if backend != "torch" and (device.type != "cpu" or not is_installed(backend)):
                continue
            if backend != "torch" and precision not in backend_precisions(backend):
                continue
            model = QualiCLIP.from_pretrained(pth, device=device, backend=backend, precision=precision, fast=fast)
            name = f"{backend}{' fast' if fast else ''} {precision}"
            models[name] = (model, 16, TOLERANCES.get((backend, fast, precision), REDUCED_TOLERANCE))

    x = image.to(device)

    def crops_one_by_one(model: QualiCLIP) -> torch.Tensor:
        """The map as a user would compute it by hand: every window cropped and scored alone, in map order."""
        crops = [[model(x[:, :, r : r + window[0], c : c + window[1]])[0] for c in cols] for r in rows]
        return torch.stack([torch.stack(row) for row in crops]).cpu()

    def mapper(model: QualiCLIP, chunk: int):
        return lambda: model.quality_map(x, args.patch, args.stride, chunk_size=chunk)

    timed = {
        "crops one by one (torch fp32)": lambda: crops_one_by_one(reference),
        "whole image once": lambda: reference(x),
    }
    timed.update({name: mapper(model, chunk) for name, (model, chunk, _) in models.items()})
    with torch.inference_mode():
        expected = crops_one_by_one(reference)
        checks = {}
        for name, (model, chunk, _) in models.items():
            cells = mapper(model, chunk)()[0].cpu()
            own = crops_one_by_one(model) if model is not reference else expected
            checks[name] = (float((cells - own).abs().max()), float((cells - expected).abs().max()))
        # Round robin, so that drift in the machine's speed (other processes) affects every row alike.
        reference(x)  # the one call not made above: every row has been called once before it is timed
        times: dict[str, list[float]] = {name: [] for name in timed}
        for _ in range(args.repeats):
            for name, fn in timed.items():
                synchronize(device)
                start = time.perf_counter()
                fn()
                synchronize(device)
                times[name].append(time.perf_counter() - start)
        seconds = {name: statistics.median(values) for name, values in times.items()}
        peaks = {}
        for name in models:
            baseline = reset_peak_memory(device)
            timed[name]()
            peaks[name] = peak_memory_mib(device, baseline)
    loop_seconds, whole_seconds = seconds["crops one by one (torch fp32)"], seconds["whole image once"]
    results = []
    for name, (_, chunk, tolerance) in models.items():
        own, fp32 = checks[name]
        results.append(
            {
                "configuration": name,
                "chunk_size": chunk,
                "seconds_per_map": seconds[name],
                "windows_per_s": len(rows) * len(cols) / seconds[name],
                "vs_crops_one_by_one": loop_seconds / seconds[name],
                "peak_memory_mib": peaks[name],
                "max_abs_diff_vs_own_crops": own,
                "max_abs_diff_vs_fp32_crops": fp32,
                "tolerance": tolerance,
                "valid": own <= tolerance,
            }
        )

    print(f"{source}: {len(rows)} x {len(cols)} windows of {window[0]} x {window[1]}, stride {args.stride}, {device}")
    print(
        f"reference, crops one by one (torch fp32): {loop_seconds:.3f} s; the whole image once: {whole_seconds:.3f} s"
    )
    print(
        f"{'configuration':<28} {'s/map':>7} {'windows/s':>10} {'vs loop':>8} {'peak MiB':>9} {'vs own crops':>13} "
        f"{'vs fp32 crops':>14}"
    )
    for r in results:
        flag = "" if r["valid"] else "  INVALID"
        print(
            f"{r['configuration']:<28} {r['seconds_per_map']:>7.3f} {r['windows_per_s']:>10.1f} "
            f"{r['vs_crops_one_by_one']:>7.2f}x {r['peak_memory_mib']:>9.0f} {r['max_abs_diff_vs_own_crops']:>13.1e} "
            f"{r['max_abs_diff_vs_fp32_crops']:>14.1e}{flag}"
        )
    result = {
        "benchmark": "quality map",
        "machine": machine(device),
        "image": source,
        "patch": args.patch,
        "stride": args.stride,
        "grid": {"row_starts": rows, "col_starts": cols, "window": list(window)},
        "weights": "random (calibrated BatchNorm)" if args.weights is None else str(args.weights),
        "repeats": args.repeats,
        "reference": {"crops_one_by_one_seconds": loop_seconds, "whole_image_seconds": whole_seconds},
        "rows": results,
    }
    output = args.output or ROOT / "results" / f"quality_map_{device.type}.json"
    return write_result(output, result, all(r["valid"] for r in results))


if __name__ == "__main__":
    sys.exit(main())
