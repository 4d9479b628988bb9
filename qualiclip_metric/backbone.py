"""CLIP's RN50 image tower ("ModifiedResNet"), with OpenAI's parameter names, defined here.

Defining the tower here keeps ``import qualiclip_metric`` and the first score fast: importing open_clip
pulls in its whole model zoo. The architecture is OpenAI's: a three-convolution stem with average
pooling, bottleneck blocks that downsample by average pooling before the stride (anti-aliasing), and an
attention pool whose projections :func:`qualiclip_metric.model.attention_pool` uses. Parity with open_clip
and pyiqa on the same weights is tested.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

#: Blocks per stage of RN50.
RN50_LAYERS = (3, 4, 6, 3)


def _conv_bn(in_channels: int, out_channels: int, kernel: int) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    conv = nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False)
    return conv, nn.BatchNorm2d(out_channels)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> (average pool) -> 1x1 expansion by 4, with an average-pooled projection shortcut."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(in_channels, channels, 1)
        self.conv2, self.bn2 = _conv_bn(channels, channels, 3)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3, self.bn3 = _conv_bn(channels, channels * self.expansion, 1)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride > 1 or in_channels != channels * self.expansion:
            # Keys downsample.0 (conv) and downsample.1 (norm), as in OpenAI's checkpoints; the pool has no weights.
            self.downsample = nn.Sequential()
            self.downsample.add_module("-1", nn.AvgPool2d(stride))
            self.downsample.add_module("0", nn.Conv2d(in_channels, channels * self.expansion, 1, bias=False))
            self.downsample.add_module("1", nn.BatchNorm2d(channels * self.expansion))

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        return self.relu(out + shortcut)


class AttentionPool(nn.Module):
    """The attention pool's weights; the pooling itself is :func:`qualiclip_metric.model.attention_pool`.

    ``positional_embedding`` is kept so checkpoints load and save unchanged, but the score never adds it.
    """

    def __init__(self, spatial_size: int, channels: int, num_heads: int, output_dim: int) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.zeros(spatial_size**2 + 1, channels))
        self.k_proj = nn.Linear(channels, channels)
        self.q_proj = nn.Linear(channels, channels)
        self.v_proj = nn.Linear(channels, channels)
        self.c_proj = nn.Linear(channels, output_dim)
        self.num_heads = num_heads


class ModifiedResNet(nn.Module):
    """RN50 trunk: ``stem``, ``layer1`` .. ``layer4``, and ``attnpool`` (2048 channels to ``output_dim``)."""

    def __init__(
        self,
        layers: tuple[int, int, int, int] = RN50_LAYERS,
        output_dim: int = 1024,
        heads: int = 32,
        image_size: int = 224,
        width: int = 64,
    ) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width // 2)
        self.conv2, self.bn2 = _conv_bn(width // 2, width // 2, 3)
        self.conv3, self.bn3 = _conv_bn(width // 2, width, 3)
        self.avgpool = nn.AvgPool2d(2)
        self.relu = nn.ReLU(inplace=True)
        channels = width
        stages = []
        for index, blocks in enumerate(layers):
            planes, stride = width * 2**index, 1 if index == 0 else 2
            stage = [Bottleneck(channels, planes, stride)]
            channels = planes * Bottleneck.expansion
            stage += [Bottleneck(channels, planes) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.attnpool = AttentionPool(image_size // 32, channels, heads, output_dim)

    @property
    def stages(self) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module]:
        """The four residual stages, in order."""
        return (self.layer1, self.layer2, self.layer3, self.layer4)

    def trunk(self, x: Tensor) -> Tensor:
        """Stem and residual stages: the (N, 2048, H/32, W/32) feature map the attention pool reads."""
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x

    def stem(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.relu(self.bn3(self.conv3(x)))
        return self.avgpool(x)
