"""Registry weights: load costs with and without the verification stamp, QualiCLIP+ against pyiqa's, and the
time the default takes to fail without network.

    python benchmarks/bench_pretrained.py [--size 500] [--repeats 5]

Random weights stand in for the registry's files (speed does not depend on the values): a hub cache is
pre-filled at the pinned commit and the registry's sha256 and size are set to the generated files', so the
real code path runs (pinned lookup, hash, conversion, stamp). pyiqa's QualiCLIP+ reads the same files;
a score difference above the tolerance invalidates the speed figures.
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
from common import (
    PARITY_TOLERANCE,
    ROOT,
    call_seconds,
    machine,
    pyiqa_downloads_from,
    random_official_checkpoint,
    write_result,
)

PROMPTS = [
    "Good photo.", "Bad photo.", "Sharp image.", "Blurry image.", "Sharp edges.", "Blurry edges.",
    "High-resolution image.", "Low-resolution image.", "Noise-free image.", "Noisy image.",
    "High-quality image.", "Low-quality image.", "Good picture.", "Bad picture.",
]  # fmt: skip


def pyiqa_prompt_learner(official_pth: Path, folder: Path) -> Path:
    """A prompt learner made by pyiqa's own class, in its file layout, with a random context."""
    from pyiqa.archs.clip_model import build_model
    from pyiqa.archs.qualiclip_arch import PromptLearner

    state = torch.load(official_pth, map_location="cpu", weights_only=True)
    clip = build_model({k.removeprefix("clip_model."): v for k, v in state.items() if k.startswith("clip_model.")})
    torch.manual_seed(1)
    learner = PromptLearner(clip.float(), PROMPTS, n_ctx=16, prompt_specific_ctx=True)
    with torch.no_grad():
        learner.ctx.normal_(0, 0.3)
    path = folder / "QualiCLIP+_spaq.pth"
    torch.save({"params": {f"prompt_learner.{k}": v for k, v in learner.state_dict().items()}}, path)
    return path


def pin_registry(files: dict[str, Path], cache: Path) -> None:
    """Pre-fill ``cache`` with ``files`` at the registry's commit and pin the registry to their hashes, as the
    tests do (``tests/hubcache.py``)."""
    sys.path.insert(0, str(ROOT.parent / "tests"))
    from hubcache import pin_to, prefill

    from qualiclip_metric import pretrained
    from qualiclip_metric.integrity import sha256_file

    prefill(cache, pretrained.PYIQA_REPO, files, pretrained.PYIQA_COMMIT)
    pins = {name: (path, sha256_file(path), path.stat().st_size) for name, path in files.items()}
    for name, entry in list(pretrained.REGISTRY.items()):
        pretrained.REGISTRY[name] = pin_to(entry, pins)


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def offline_failure_seconds(folder: Path) -> dict[str, object]:
    """``qualiclip score IMAGE`` with downloads allowed, empty caches, and the Hub's host as this machine sees it."""
    from PIL import Image

    image = folder / "probe.png"
    Image.new("RGB", (64, 64), (100, 120, 140)).save(image)
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_HUB_CACHE": str(folder / "empty-hub")}
    env["HF_ASSETS_CACHE"] = str(folder / "empty-assets")
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "qualiclip_metric", "score", str(image)], capture_output=True, text=True, env=env
    )
    elapsed = time.perf_counter() - start
    return {
        "seconds": round(elapsed, 2),
        "exit_code": result.returncode,
        "retry_lines": result.stderr.count("Retrying in"),
        "stderr": result.stderr.strip().splitlines()[:3],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=500, help="square image side for the forward timing")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path, default=ROOT / "results" / "pretrained_cpu.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        os.environ["HF_ASSETS_CACHE"] = str(folder / "assets")
        official = random_official_checkpoint(folder)
        learner = pyiqa_prompt_learner(official, folder)
        cache = folder / "hub"
        pin_registry({"QualiCLIP.pth": official, "QualiCLIP+_spaq.pth": learner}, cache)
        from qualiclip_metric import QualiCLIP

        def load(name: str, **kwargs: object) -> QualiCLIP:
            return QualiCLIP.from_pretrained(name, cache_dir=cache, **kwargs)

        def load_costs(name: str) -> dict[str, float]:
            def median(**kwargs: object) -> float:
                return statistics.median(seconds(lambda: load(name, **kwargs)) for _ in range(args.repeats))

            first = seconds(lambda: load(name))
            return {
                "first (hash, convert, stamp)": first,
                "second (stamp)": median(),
                "verify='always' (hash)": median(verify="always"),
                "verify=False": median(verify=False),
            }

        loads = {name: load_costs(name) for name in ("qualiclip", "qualiclip+-spaq")}

        ours = load("qualiclip+-spaq")
        import pyiqa.archs.qualiclip_arch as arch

        with pyiqa_downloads_from(official, learner):
            reference = arch.QualiCLIP(model_type="qualiclip+-spaq", pretrained=True).eval()
        image = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            difference = float((ours(image) - reference(image).squeeze(1)).abs().max())
            ours_s = statistics.median(call_seconds(lambda: ours(image), args.repeats, image.device))
            pyiqa_s = statistics.median(call_seconds(lambda: reference(image), args.repeats, image.device))
        failure = offline_failure_seconds(folder)

    valid = difference <= PARITY_TOLERANCE
    print(f"{'load':<34} {'qualiclip':>10} {'qualiclip+-spaq':>16}")
    for key in loads["qualiclip"]:
        print(f"{key:<34} {loads['qualiclip'][key]:>9.3f}s {loads['qualiclip+-spaq'][key]:>15.3f}s")
    print(
        f"QualiCLIP+ forward {args.size}x{args.size}: ours {ours_s:.3f} s, pyiqa {pyiqa_s:.3f} s "
        f"({pyiqa_s / ours_s:.2f}x), score difference {difference:.2e}"
    )
    retries = failure["retry_lines"]
    print(f"default without network: {failure['seconds']} s, exit {failure['exit_code']}, {retries} retries")
    result = {
        "machine": machine(torch.device("cpu")),
        "load_seconds": loads,
        "qualiclip_plus_forward": {
            "size": args.size,
            "ours_s": ours_s,
            "pyiqa_s": pyiqa_s,
            "speedup": pyiqa_s / ours_s,
            "max_score_difference": difference,
        },
        "default_without_network": failure,
        "valid": valid,
    }
    return write_result(args.output, result, valid)


if __name__ == "__main__":
    sys.exit(main())
