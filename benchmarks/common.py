"""Helpers shared by the benchmarks: random weights, pyiqa's reference model, machine description."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import platform
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent
CLIVE = ROOT.parent.parent / "shared" / "data" / "clive" / "images"
#: fp32 score agreement below which a speed comparison is valid.
PARITY_TOLERANCE = 1e-5


def random_official_checkpoint(folder: Path) -> Path:
    """A random CLIP RN50 in the official ``qualiclip.pth`` layout (speed does not depend on values)."""
    import open_clip

    logging.getLogger().setLevel(logging.ERROR)
    torch.manual_seed(0)
    clip = open_clip.create_model("RN50-quickgelu", pretrained=None).eval()
    with torch.no_grad():
        clip.logit_scale.fill_(math.log(100.0))
    prompts = F.normalize(torch.randn(14, 1024), dim=-1)
    path = folder / "qualiclip.pth"
    torch.save({"prompts_features": prompts, **{f"clip_model.{k}": v for k, v in clip.state_dict().items()}}, path)
    return path


@contextlib.contextmanager
def pyiqa_downloads_from(official_pth: Path) -> Iterator[None]:
    """Point pyiqa's two QualiCLIP downloads (CLIP RN50, QualiCLIP.pth) at a local checkpoint."""
    import pyiqa.archs.qualiclip_arch as arch
    from pyiqa.archs.clip_model import build_model

    state = torch.load(official_pth, map_location="cpu", weights_only=True)
    clip_state = {k.removeprefix("clip_model."): v for k, v in state.items() if k.startswith("clip_model.")}
    with (
        mock.patch.object(arch, "load", lambda name, device: build_model(clip_state).to(device).float()),
        mock.patch.object(arch, "load_file_from_url", lambda url, *a, **k: str(official_pth)),
    ):
        yield


def pyiqa_model(official_pth: Path, temperature: float = 1.0) -> torch.nn.Module:
    """pyiqa's own QualiCLIP arch on the given weights."""
    import pyiqa.archs.qualiclip_arch as arch

    with pyiqa_downloads_from(official_pth):
        return arch.QualiCLIP(model_type="qualiclip", temperature=temperature).eval()


def machine(device: torch.device) -> dict[str, object]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
    }


def write_result(output: Path, result: dict[str, object], valid: bool) -> int:
    """Write the JSON result and return the exit code: 1 when a parity check invalidated the figures."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {output}")
    return 0 if valid else 1
