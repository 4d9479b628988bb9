"""What the hub tools share: probe images and scoring two models alike."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import Tensor

from qualiclip_metric import ImageLoadError, QualiCLIP, load_image
from qualiclip_metric.functional import score_batch
from qualiclip_metric.inputs import collect_image_files, resize_longer_side

#: Generated probe images when no folder is given: sizes chosen to include non-square ones.
PROBE_SIZES = ((224, 224), (160, 288), (320, 240))


def probe_images(folder: Path | None, max_size: int | None = 512) -> dict[str, Tensor]:
    """Images to score by name: every image file of ``folder``, or deterministic generated ones."""
    if folder is not None:
        files = collect_image_files([folder])
        images = {}
        for path in files:
            try:
                images[path.name] = resize_longer_side(load_image(path)[None], max_size)
            except ImageLoadError as err:  # one broken file must not stop a comparison
                print(f"skipping {err}", file=sys.stderr)
        if not images:
            raise ValueError(f"{folder}: no readable image files")
        return images
    generator = torch.Generator().manual_seed(0)
    images = {}
    for index, (height, width) in enumerate(PROBE_SIZES):
        coarse = torch.rand(2, 3, 6, 8, generator=generator)
        smooth = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
        noisy = smooth + 0.2 * (torch.rand(2, 3, height, width, generator=generator) - 0.5)
        for item, image in enumerate(noisy.clamp(0, 1)):
            images[f"generated-{index}-{item}"] = image[None]
    return images


def score_all(model: QualiCLIP, images: dict[str, Tensor]) -> Tensor:
    """Scores in the order of ``images``."""
    return torch.cat([score_batch(model, image).cpu() for image in images.values()])
