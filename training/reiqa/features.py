"""Re-IQA image representations: content and quality trunks, each at full and half scale, concatenated.

For ResNet-50 trunks that is 2048 x 2 scales x 2 encoders = 8192 values per image, in the order
content-full, content-half, quality-full, quality-half. The half scale is the image downscaled by 2
(antialiased bilinear), as in the paper's multi-scale features.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from qualiclip_metric.checkpoint import read_tensor_layout
from qualiclip_metric.inputs import ImageLoadError, load_image, resize_longer_side
from training.reiqa.model import ResNetTrunk, load_trunk, trunk_from_state

#: Names of the quality-encoder export inside ``<output_dir>/export``.
ENCODER_FILE = "quality_encoder.safetensors"
ENCODER_CONFIG = "quality_encoder.json"
HEAD_FILE = "projection_head.safetensors"


def encoder_from_spec(spec: str, arch: str = "resnet50") -> tuple[ResNetTrunk, dict[str, object]]:
    """A trunk from ``random`` / ``random:SEED``, an export folder, or a weights file; and how it was made.

    An export folder's JSON names its architecture, which then overrides ``arch``.

    Raises:
        CheckpointError: the file or export cannot be used (missing, damaged, not a trunk of ``arch``).
    """
    if spec == "random" or spec.startswith("random:"):
        seed = int(spec.partition(":")[2] or 0)
        return load_trunk(arch, None, seed=seed).eval(), {"source": "random", "seed": seed, "arch": arch}
    path = Path(spec)
    if path.is_dir():  # an export: its files are checked against the hashes its config records
        tensors, saved = read_tensor_layout(path, [ENCODER_FILE], config_file=ENCODER_CONFIG)
        arch = str(saved["arch"])
        trunk = trunk_from_state(arch, tensors[ENCODER_FILE], str(path / ENCODER_FILE))
        return trunk.eval(), {"source": str((path / ENCODER_FILE).resolve()), "arch": arch}
    return load_trunk(arch, path, seed=0).eval(), {"source": str(path.resolve()), "arch": arch}


def multiscale_features(trunk: ResNetTrunk, image: Tensor, max_size: int | None, precision: str = "fp32") -> Tensor:
    """One trunk's features (N, 2 * feature_dim) of a batch in [0, 1]: full scale, then half scale."""
    device = next(trunk.parameters()).device
    image = resize_longer_side(image.to(device), max_size)
    half_size = [max(1, side // 2) for side in image.shape[-2:]]
    half = F.interpolate(image, size=half_size, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        return torch.cat([trunk(image).float(), trunk(half).float()], dim=1)


def read_images(paths: Sequence[str | Path]) -> Iterator[tuple[Path, Tensor | None, str | None]]:
    """(path, image or None, error or None) per file, in order; unreadable files do not stop the iteration."""
    for path in map(Path, paths):
        try:
            yield path, load_image(path), None
        except ImageLoadError as err:
            yield path, None, str(err)


@dataclass
class FeatureExtractor:
    """Both trunks in eval mode; ``max_size`` bounds the longer side before the full scale (None: as is)."""

    content: ResNetTrunk
    quality: ResNetTrunk
    max_size: int | None = None
    precision: str = "fp32"
    device: torch.device = torch.device("cpu")

    def __post_init__(self) -> None:
        self.content = self.content.to(self.device).eval()
        self.quality = self.quality.to(self.device).eval()

    @property
    def dim(self) -> int:
        return 2 * (self.content.feature_dim + self.quality.feature_dim)

    def __call__(self, image: Tensor) -> Tensor:
        """Features (N, dim) of a batch (N, 3, H, W) in [0, 1]: content full/half, then quality full/half."""
        parts = [
            multiscale_features(trunk, image, self.max_size, self.precision) for trunk in (self.content, self.quality)
        ]
        return torch.cat(parts, dim=1)
