"""Helpers shared by the benchmarks: random weights, pyiqa's reference model, machine description."""

from __future__ import annotations

import contextlib
import json
import math
import platform
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import torch

from qualiclip_metric.machine import cpu_features, cpu_model

ROOT = Path(__file__).resolve().parent
CLIVE = ROOT.parent.parent / "shared" / "data" / "clive" / "images"
#: fp32 score agreement below which a speed comparison is valid.
PARITY_TOLERANCE = 1e-5


def random_official_checkpoint(folder: Path) -> Path:
    """A random CLIP RN50 in the official ``qualiclip.pth`` layout (speed does not depend on values).

    The tests' random CLIP (``tests/random_clip.py``: residual branches on, BatchNorm calibrated, prompts
    encoded), with the attention pool's query projection scaled by 1e-3 so that fp32 parity checks do not
    depend on summation order.

    Where open_clip is not installed (the bare GPU machine), the image tower alone with random prompt
    features (``build_random_tower``): speed and precision comparisons need no text tower.
    """
    sys.path.insert(0, str(ROOT.parent / "tests"))
    from random_clip import build_random_clip, build_random_tower, official_state

    try:
        import open_clip  # noqa: F401

        build = build_random_clip
    except ImportError:
        build = build_random_tower

    path = folder / "qualiclip.pth"
    torch.save(official_state(*build(attention_query_scale=1e-3)), path)
    return path


@contextlib.contextmanager
def pyiqa_downloads_from(official_pth: Path, prompt_learner: Path | None = None) -> Iterator[None]:
    """Point pyiqa's QualiCLIP downloads (CLIP RN50, QualiCLIP.pth and, for QualiCLIP+, its prompt
    learner) at local files."""
    import pyiqa.archs.arch_util as arch_util
    import pyiqa.archs.qualiclip_arch as arch
    from pyiqa.archs.clip_model import build_model

    state = torch.load(official_pth, map_location="cpu", weights_only=True)
    clip_state = {k.removeprefix("clip_model."): v for k, v in state.items() if k.startswith("clip_model.")}

    def local(url: str, *args: object, **kwargs: object) -> str:
        return str(official_pth if url.endswith("/QualiCLIP.pth") or prompt_learner is None else prompt_learner)

    with (
        mock.patch.object(arch, "load", lambda name, device: build_model(clip_state).to(device).float()),
        mock.patch.object(arch, "load_file_from_url", local),
        mock.patch.object(arch_util, "load_file_from_url", local),
    ):
        yield


def pyiqa_model(official_pth: Path, temperature: float = 1.0) -> torch.nn.Module:
    """pyiqa's own QualiCLIP arch on the given weights, computing the official score.

    The official scorer multiplies similarities by a fixed 100 where pyiqa uses the checkpoint's
    ``logit_scale``; the two agree on the released checkpoint (ln 100), and setting it here makes them
    agree on any checkpoint.
    """
    import pyiqa.archs.qualiclip_arch as arch

    with pyiqa_downloads_from(official_pth):
        model = arch.QualiCLIP(model_type="qualiclip", temperature=temperature).eval()
    with torch.no_grad():
        model.clip_model[0].logit_scale.fill_(math.log(100.0))
    return model


def machine(device: torch.device) -> dict[str, object]:
    return {
        "platform": platform.platform(),
        "processor": cpu_model(),
        "cpu_features": cpu_features(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
    }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def call_seconds(fn: Callable[[], object], repeats: int, device: torch.device) -> list[float]:
    """Wall seconds of ``repeats`` calls of ``fn`` after one warm-up call, waiting for the device each time."""
    fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def reset_peak_memory(device: torch.device) -> int:
    """Start a peak-memory measurement; returns the baseline to pass to :func:`peak_memory_mib`.

    On the CPU the peak resident set size (VmHWM) is reset through ``/proc/self/clear_refs``.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS") * 1024


def peak_memory_mib(device: torch.device, baseline: int) -> float:
    """Peak memory above ``baseline`` since :func:`reset_peak_memory`, in MiB."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - baseline) / 2**20
    return (_status_kib("VmHWM") * 1024 - baseline) / 2**20


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def write_result(output: Path, result: dict[str, object], valid: bool) -> int:
    """Write the JSON result and return the exit code: 1 when a parity check invalidated the figures."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {output}")
    return 0 if valid else 1
