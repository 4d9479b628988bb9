"""Fast inference: an inference-only copy of the RN50 trunk, built from the model's own weights.

Three changes that leave the function unchanged: every BatchNorm (always in evaluation mode for
scoring) is folded into the convolution before it, activations use the channels-last layout that
oneDNN and cuDNN run fastest, and the weights are stored in the compute dtype, so no per-call casts
are made as under autocast. Optionally the copy is compiled with ``torch.compile`` and frozen weights.
In fp32 scores move by about 1e-7; in bf16 by up to about 2e-3 (the attention pool and the score
itself stay in fp32).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from qualiclip_metric.backbone import Bottleneck, ModifiedResNet


def fold_batchnorm(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> nn.Conv2d:
    """A convolution with bias computing ``norm(conv(x))`` for ``norm`` in evaluation mode."""
    scale = norm.weight.double() / torch.sqrt(norm.running_var.double() + norm.eps)
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    with torch.no_grad():
        fused.weight.copy_(conv.weight.double() * scale.view(-1, 1, 1, 1))
        fused.bias.copy_(norm.bias.double() + (bias - norm.running_mean.double()) * scale)
    return fused


def _conv_norm_pairs(tower: ModifiedResNet) -> Iterator[tuple[nn.Module, str, str]]:
    """(owner, convolution attribute, norm attribute) for every convolution followed by a BatchNorm."""
    for index in (1, 2, 3):
        yield tower, f"conv{index}", f"bn{index}"
    for stage in tower.stages:
        for block in stage:
            assert isinstance(block, Bottleneck)
            for index in (1, 2, 3):
                yield block, f"conv{index}", f"bn{index}"
            if block.downsample is not None:
                yield block.downsample, "0", "1"


class FusedTrunk(nn.Module):
    """Stem and residual stages with BatchNorm folded, channels-last, weights in ``dtype``.

    Maps normalized images (N, 3, H, W) to the trunk's (N, 2048, H/32, W/32) feature map, in ``dtype``.
    """

    def __init__(self, tower: ModifiedResNet, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        trunk = copy.deepcopy(tower)
        del trunk.attnpool  # stays with the model, in fp32
        for owner, conv_name, norm_name in _conv_norm_pairs(trunk):
            fused = fold_batchnorm(getattr(owner, conv_name), getattr(owner, norm_name))
            setattr(owner, conv_name, fused)
            setattr(owner, norm_name, nn.Identity())
        self.tower = trunk.to(dtype=dtype, memory_format=torch.channels_last).eval().requires_grad_(False)
        self.dtype = dtype

    def forward(self, x: Tensor) -> Tensor:
        return self.tower.trunk(x.to(dtype=self.dtype, memory_format=torch.channels_last))


def build_fused_trunk(tower: ModifiedResNet, dtype: torch.dtype, compiled: bool = False) -> Callable[[Tensor], Tensor]:
    """The fused trunk, compiled with frozen weights (``torch.compile``, inductor) when ``compiled``."""
    trunk = FusedTrunk(tower, dtype)
    if not compiled:
        return trunk
    # Freezing lets inductor fold weights into the graph and pre-pack them for oneDNN on the CPU.
    return torch.compile(trunk, options={"freezing": True})
