"""Cold start: from process start to the first score, ours against pyiqa's built-in QualiCLIP.

    python benchmarks/bench_cold_start.py [--repeats 5] [--image FILE]

Each side runs in a fresh Python process (imports, weight loading, first forward on one image); the
time from launching the interpreter to the moment the score is ready is measured (the process's exit,
which adds the interpreter's teardown, is reported too). The two sides alternate and the median is
reported, beside that of a process that only imports torch, the floor of both.

Ours is measured as a first process (an empty package cache: the weights are hashed and, for a
backend, converted) and as a later one (the verification stamp and the conversion are in the cache),
for the torch backend and for each installed backend in ``--backends``. Both
score the same image with the same random weights; pyiqa's numbers use a softmax temperature of 2, so
ours runs with ``temperature=2`` here, and a score difference above the tolerance invalidates the run.
pyiqa's two downloads are pointed at the local checkpoint (its CLIP is built from the state dict, as
after a download).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import CLIVE, PARITY_TOLERANCE, ROOT, machine, random_official_checkpoint, write_result

from qualiclip_metric.checkpoint import read_checkpoint, write_layout
from qualiclip_metric.runtimes import is_installed

# Each script prints its score, then the wall-clock time at which the score was ready.
OURS = """
import sys, time
from qualiclip_metric import QualiCLIP, load_image
model = QualiCLIP.from_pretrained(sys.argv[1], temperature=2.0, backend=sys.argv[3])
print(float(model(load_image(sys.argv[2])[None])[0]), time.time())
"""

PYIQA = """
import sys, time
sys.path.insert(0, sys.argv[3])
from common import pyiqa_downloads_from
from pathlib import Path
import pyiqa
with pyiqa_downloads_from(Path(sys.argv[1])):
    metric = pyiqa.create_metric("qualiclip-pyiqa", device="cpu")  # pyiqa's own class (common registers it)
print(float(metric(sys.argv[2]).flatten()[0]), time.time())
"""


def run(code: str, *args: str, assets: str | None = None) -> tuple[float, float, float]:
    """Seconds from launching a fresh interpreter to its first score, to its exit, and the score.

    ``assets`` is the Hugging Face assets cache the process sees (the package's stamps and conversions).
    """
    environment = {**os.environ, **({"HF_ASSETS_CACHE": assets} if assets else {})}
    launched = time.time()
    result = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=False, env=environment
    )
    exited = time.time()
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    score, scored_at = map(float, result.stdout.strip().splitlines()[-1].split())
    return scored_at - launched, exited - launched, score


def run_seconds(code: str) -> float:
    return run(code)[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--image", type=Path, help="image to score (default: the first CLIVE image, or a test crop)")
    parser.add_argument("--output", type=Path, default=ROOT / "results" / "cold_start_cpu.json")
    parser.add_argument("--backends", nargs="*", default=["openvino", "onnxruntime"], help="non-torch backends")
    args = parser.parse_args()
    image = args.image or next(iter(sorted(CLIVE.glob("*.bmp")) + sorted(CLIVE.glob("*.JPG"))), None)
    image = image or ROOT.parent / "tests" / "data" / "kodim_crop.png"
    with tempfile.TemporaryDirectory() as folder:
        official = random_official_checkpoint(Path(folder))
        layout = write_layout(read_checkpoint(official), Path(folder) / "layout")
        ours_times, pyiqa_times, ours_exits, pyiqa_exits, ours_score, pyiqa_score = [], [], [], [], 0.0, 0.0
        backends = ["torch", *(name for name in args.backends if is_installed(name))]
        first: dict[str, list[float]] = {name: [] for name in backends}
        later: dict[str, list[float]] = {name: [] for name in backends}
        backend_scores: dict[str, float] = {}
        kept_cache = tempfile.mkdtemp(dir=folder)  # stamps and conversions made by the first run stay
        for repeat in range(args.repeats):
            for backend in backends:
                if backend == "torch" or repeat < 2:  # a conversion takes seconds: two first processes are enough
                    empty = tempfile.mkdtemp(dir=folder)
                    seconds, _, backend_scores[backend] = run(OURS, str(layout), str(image), backend, assets=empty)
                    first[backend].append(seconds)
                if repeat == 0:
                    run(OURS, str(layout), str(image), backend, assets=kept_cache)
                seconds, exit_seconds, score = run(OURS, str(layout), str(image), backend, assets=kept_cache)
                later[backend].append(seconds)
                if backend == "torch":
                    ours_score = score
                    ours_times.append(seconds)
                    ours_exits.append(exit_seconds)
            seconds, exit_seconds, pyiqa_score = run(PYIQA, str(official), str(image), str(ROOT))
            pyiqa_times.append(seconds)
            pyiqa_exits.append(exit_seconds)
        torch_import = statistics.median(
            run_seconds("import torch, time; print(0, time.time())") for _ in range(args.repeats)
        )
    difference = abs(ours_score - pyiqa_score)
    backend_differences = {name: abs(score - ours_score) for name, score in backend_scores.items()}
    valid = difference <= PARITY_TOLERANCE and all(d <= PARITY_TOLERANCE for d in backend_differences.values())
    ours, pyiqa = statistics.median(ours_times), statistics.median(pyiqa_times)
    print(f"image: {image}\n{'':<40} {'to score':>8} {'vs pyiqa':>9} {'to exit':>8}")
    print(
        f"{'pyiqa create_metric + first score':<40} {pyiqa:>8.2f} {1.0:>8.2f}x {statistics.median(pyiqa_exits):>8.2f}"
    )
    print(
        f"{'qualiclip-metric from_pretrained + score':<40} {ours:>8.2f} {pyiqa / ours:>8.2f}x "
        f"{statistics.median(ours_exits):>8.2f}"
    )
    print(f"a process that only imports torch: {torch_import:.2f} s to the import's end")
    print(f"\n{'ours, by backend':<40} {'first':>8} {'later':>8} {'later vs pyiqa':>15}")
    for name in backends:
        first_s, later_s = statistics.median(first[name]), statistics.median(later[name])
        print(f"{name:<40} {first_s:>8.2f} {later_s:>8.2f} {pyiqa / later_s:>14.2f}x")
    print(f"score difference {difference:.2g} ({'valid' if valid else 'INVALID: scores disagree'})")
    result = {
        "benchmark": "cold start: process launch to the first score (median wall seconds)",
        "machine": machine(torch.device("cpu")),
        "image": str(image),
        "repeats": args.repeats,
        "pyiqa_seconds": pyiqa,
        "ours_seconds": ours,
        "speedup": pyiqa / ours,
        "torch_import_seconds": torch_import,
        "all_pyiqa_seconds": pyiqa_times,
        "all_ours_seconds": ours_times,
        "pyiqa_seconds_to_exit": pyiqa_exits,
        "ours_seconds_to_exit": ours_exits,
        "score_difference": difference,
        "by_backend": {
            name: {
                "first_process_seconds": statistics.median(first[name]),
                "later_process_seconds": statistics.median(later[name]),
                "later_vs_pyiqa": pyiqa / statistics.median(later[name]),
                "all_first": first[name],
                "all_later": later[name],
                "score_difference_vs_torch": backend_differences[name],
            }
            for name in backends
        },
        "valid": valid,
    }
    return write_result(args.output, result, valid)


if __name__ == "__main__":
    sys.exit(main())
