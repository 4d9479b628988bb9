"""CLIP's RN50 image tower ("ModifiedResNet"), with OpenAI's parameter names, defined here.

Defining the tower here keeps ``import qualiclip_metric`` and the first score fast: importing open_clip
pulls in its whole model zoo. The architecture is OpenAI's: a three-convolution stem with average
pooling, bottleneck blocks that downsample by average pooling before the stride (anti-aliasing), and an
attention pool. The pool differs from OpenAI's in one way, on purpose: it skips the positional embedding
(which only exists for 7 x 7 feature maps) so that any resolution can be scored, as the official scorer
does. Parity with open_clip and pyiqa on the same weights is tested.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
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
    """CLIP's attention pooling without the positional embedding, so any H x W works.

    ``positional_embedding`` is kept so checkpoints load and save unchanged, but the score never adds it.
    Only the mean token's query is computed: the output is that token alone, and skipping the other
    queries keeps memory linear in the number of spatial positions.
    """

    def __init__(self, spatial_size: int, channels: int, num_heads: int, output_dim: int) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.zeros(spatial_size**2 + 1, channels))
        self.k_proj = nn.Linear(channels, channels)
        self.q_proj = nn.Linear(channels, channels)
        self.v_proj = nn.Linear(channels, channels)
        self.c_proj = nn.Linear(channels, output_dim)
        self.num_heads = num_heads

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) feature map to the (N, output_dim) pooled token that attends from its mean."""
        n, c = x.shape[:2]
        tokens = x.flatten(2).transpose(1, 2)  # (N, HW, C)
        mean = tokens.mean(dim=1, keepdim=True)  # (N, 1, C)
        sequence = torch.cat([mean, tokens], dim=1)  # (N, HW + 1, C)
        heads = self.num_heads

        def split_heads(t: Tensor) -> Tensor:
            return t.unflatten(-1, (heads, c // heads)).transpose(1, 2)  # (N, heads, L, C / heads)

        query = split_heads(self.q_proj(mean))
        key = split_heads(self.k_proj(sequence))
        value = split_heads(self.v_proj(sequence))
        pooled = F.scaled_dot_product_attention(query, key, value)  # (N, heads, 1, C / heads)
        return self.c_proj(pooled.transpose(1, 2).reshape(n, c))


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

    def forward(self, x: Tensor, checkpointing: bool = False) -> Tensor:
        """Normalized images (N, 3, H, W) to (N, output_dim) embeddings (not L2-normalized)."""
        return self.attnpool(self.trunk(x, checkpointing=checkpointing))

    def trunk(self, x: Tensor, checkpointing: bool = False) -> Tensor:
        """Stem and residual stages: the (N, 2048, H/32, W/32) feature map the attention pool reads.

        ``checkpointing`` recomputes each residual stage in the backward pass instead of storing its
        activations (it has no effect where gradients are off); the values are the same either way.
        """
        x = self.stem(x)
        for stage in self.stages:
            if checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(stage, x, use_reentrant=False)
            else:
                x = stage(x)
        return x

    def stem(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.relu(self.bn3(self.conv3(x)))
        return self.avgpool(x)
