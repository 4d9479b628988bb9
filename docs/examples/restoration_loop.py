"""Train a tiny restoration network with L1 + lambda * QualiCLIPLoss.

    python docs/examples/restoration_loop.py --weights path/to/qualiclip.pth --steps 100

The task: remove blur and noise from images. The L1 term keeps the output faithful to the clean
image; the QualiCLIP term pushes it towards what CLIP's antonym prompts call sharp and noise-free.
Uses random images unless --images points to a folder.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
from torch import nn

from qualiclip_metric import QualiCLIPLoss, load_image
from qualiclip_metric.inputs import collect_image_files


class TinyRestorer(nn.Module):
    """Three convolutions predicting a residual correction."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 3, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def degrade(clean: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    blurred = F.avg_pool2d(clean, 3, stride=1, padding=1, count_include_pad=False)
    return (blurred + 0.05 * torch.randn(clean.shape, generator=generator)).clamp(0, 1)


def training_images(folder: str | None, size: int, count: int, generator: torch.Generator) -> torch.Tensor:
    if folder:
        images = [load_image(path) for path in collect_image_files([folder])[:count]]
        return torch.stack(
            [F.interpolate(im[None], size=(size, size), antialias=True, mode="bilinear")[0] for im in images]
        )
    coarse = torch.rand(count, 3, 8, 8, generator=generator)
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", help="QualiCLIP weights (default: the pretrained release)")
    parser.add_argument("--images", help="folder of clean training images (default: random images)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--size", type=int, default=128, help="training crop size")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--quality-weight", type=float, default=0.1, help="lambda of the QualiCLIP term")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    generator = torch.Generator().manual_seed(0)
    clean = training_images(args.images, args.size, 16, generator)
    restorer = TinyRestorer().to(device)
    quality_loss = QualiCLIPLoss(args.weights, loss_weight=args.quality_weight).to(device)
    optimizer = torch.optim.Adam(restorer.parameters(), lr=1e-3)  # the loss network is not in here
    initial = [p.detach().clone() for p in restorer.parameters()]

    restorer.train()
    for step in range(1, args.steps + 1):
        index = torch.randint(len(clean), (args.batch_size,), generator=generator)
        target = clean[index].to(device)
        restored = restorer(degrade(clean[index], generator).to(device))
        fidelity = F.l1_loss(restored, target)
        quality = quality_loss(restored)
        loss = fidelity + quality
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        print(f"step {step}: loss {loss.item():.4f} (L1 {fidelity.item():.4f}, QualiCLIP {quality.item():.4f})")

    changed = any(not torch.equal(before, after) for before, after in zip(initial, restorer.parameters(), strict=True))
    print(f"restorer parameters changed: {changed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
