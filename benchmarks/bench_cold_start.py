"""Cold start: from process start to the first score, ours against pyiqa's built-in QualiCLIP.

    python benchmarks/bench_cold_start.py [--repeats 5] [--image FILE]

Each side runs in a fresh Python process (imports, weight loading, first forward on one image); the
time from launching the interpreter to the moment the score is ready is measured (the process's exit,
which adds the interpreter's teardown, is reported too). The two sides alternate and the median is
reported, beside that of a process that only imports torch, the floor of both. Both
score the same image with the same random weights; pyiqa's numbers use a softmax temperature of 2, so
ours runs with ``temperature=2`` here, and a score difference above the tolerance invalidates the run.
pyiqa's two downloads are pointed at the local checkpoint (its CLIP is built from the state dict, as
after a download).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import CLIVE, PARITY_TOLERANCE, ROOT, machine, random_official_checkpoint, write_result

from qualiclip_metric.checkpoint import read_checkpoint, write_layout

# Each script prints its score, then the wall-clock time at which the score was ready.
OURS = """
import sys, time
from qualiclip_metric import QualiCLIP, load_image
model = QualiCLIP.from_pretrained(sys.argv[1], temperature=2.0)
print(float(model(load_image(sys.argv[2]))[0]), time.time())
"""

PYIQA = """
import sys, time
sys.path.insert(0, sys.argv[3])
from common import pyiqa_downloads_from
from pathlib import Path
import pyiqa
with pyiqa_downloads_from(Path(sys.argv[1])):
    metric = pyiqa.create_metric("qualiclip", device="cpu")
print(float(metric(sys.argv[2]).flatten()[0]), time.time())
"""


def run(code: str, *args: str) -> tuple[float, float, float]:
    """Seconds from launching a fresh interpreter to its first score, to its exit, and the score."""
    launched = time.time()
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False)
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
    args = parser.parse_args()
    image = args.image or next(iter(sorted(CLIVE.glob("*.bmp")) + sorted(CLIVE.glob("*.JPG"))), None)
    image = image or ROOT.parent / "tests" / "data" / "kodim_crop.png"
    with tempfile.TemporaryDirectory() as folder:
        official = random_official_checkpoint(Path(folder))
        layout = write_layout(read_checkpoint(official), Path(folder) / "layout")
        ours_times, pyiqa_times, ours_exits, pyiqa_exits, ours_score, pyiqa_score = [], [], [], [], 0.0, 0.0
        for _ in range(args.repeats):
            seconds, exit_seconds, ours_score = run(OURS, str(layout), str(image))
            ours_times.append(seconds)
            ours_exits.append(exit_seconds)
            seconds, exit_seconds, pyiqa_score = run(PYIQA, str(official), str(image), str(ROOT))
            pyiqa_times.append(seconds)
            pyiqa_exits.append(exit_seconds)
        torch_import = statistics.median(
            run_seconds("import torch, time; print(0, time.time())") for _ in range(args.repeats)
        )
    difference = abs(ours_score - pyiqa_score)
    valid = difference <= PARITY_TOLERANCE
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
        "valid": valid,
    }
    return write_result(args.output, result, valid)


if __name__ == "__main__":
    sys.exit(main())
