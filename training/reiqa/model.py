"""Re-IQA's encoders: ResNet-50 trunks, checkpoint loading, and the modified MoCo-v2 for the quality encoder.

The MoCo module keeps the key encoder and the queue inside itself (parameters without gradients and
buffers), and updates both inside ``forward`` under ``no_grad``: the engine's checkpoints then hold the
complete training state, and a resumed run continues exactly.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from qualiclip_metric.checkpoint import read_state_dict
from qualiclip_metric.errors import CheckpointError  # also importable from here, as before
from training.images import IMAGENET_MEAN, IMAGENET_STD

#: Trunks of torchvision's ResNets; ResNet-50 is the paper's, the others only make tests cheaper.
ARCHITECTURES = ("resnet18", "resnet34", "resnet50")
#: Key prefixes of checkpoints that wrap a ResNet: MoCo's query encoder and plain wrappers (the ``module.``
#: of DataParallel is already removed by :func:`~qualiclip_metric.checkpoint.read_state_dict`).
KNOWN_PREFIXES = ("encoder_q.", "trunk.", "backbone.")


class ResNetTrunk(nn.Module):
    """A torchvision ResNet without its classifier: images in [0, 1] -> globally pooled features.

    ImageNet normalisation is part of the module (as buffers), so callers always pass [0, 1] images.
    Parameter names are torchvision's (``conv1.weight``, ``layer1.0...``), without ``fc``.
    """

    def __init__(self, arch: str = "resnet50") -> None:
        super().__init__()
        if arch not in ARCHITECTURES:
            raise ValueError(f"arch must be one of {', '.join(ARCHITECTURES)}, got {arch!r}")
        self.arch = arch
        net = getattr(torchvision.models, arch)(weights=None)
        self.feature_dim: int = net.fc.in_features
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(net, name))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        x = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def trunk_state(state: Mapping[str, Tensor], source: str = "checkpoint") -> dict[str, Tensor]:
    """The trunk's tensors of a torchvision, MoCo (``encoder_q.``) or Re-IQA-export state dict.

    The classifier or MoCo projection head (``fc.*``) and MoCo's key encoder are dropped.
    """
    names = [key for key in state if key.endswith("conv1.weight") and "layer" not in key]
    if not names:
        raise CheckpointError(f"{source}: no ResNet stem (conv1.weight) among {len(state)} tensors")
    prefixes = [p for p in KNOWN_PREFIXES if any(n == f"{p}conv1.weight" for n in names)]
    prefix = prefixes[0] if prefixes else ("" if "conv1.weight" in names else None)
    if prefix is None:
        raise CheckpointError(f"{source}: unrecognised key layout (stem keys: {', '.join(names[:3])})")
    trunk = {}
    for key, value in state.items():
        if key.startswith(prefix):
            name = key[len(prefix) :]
            if not name.startswith("fc.") and not name.startswith("head."):
                trunk[name] = value
    return trunk


def trunk_from_state(arch: str, state: Mapping[str, Tensor], origin: str) -> ResNetTrunk:
    """A trunk holding the tensors of ``state`` (any layout :func:`trunk_state` reads).

    Every trunk tensor must be present with the right shape; a partial match is an error, not a silent
    random layer.
    """
    trunk = ResNetTrunk(arch)
    state = trunk_state(state, origin)
    expected = trunk.state_dict()
    missing = sorted(set(expected) - set(state))
    wrong = sorted(k for k in expected if k in state and state[k].shape != expected[k].shape)
    if missing or wrong:
        details = (f"missing {missing[:4]}" if missing else "") + (f" wrong shapes {wrong[:4]}" if wrong else "")
        raise CheckpointError(f"{origin}: not a {arch} trunk: {details.strip()}")
    trunk.load_state_dict({k: state[k] for k in expected})
    return trunk


def load_trunk(arch: str, checkpoint: str | Path | None, *, seed: int = 0) -> ResNetTrunk:
    """A trunk from a local weights file, or (``checkpoint=None``) randomly initialised from ``seed``."""
    if checkpoint is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return ResNetTrunk(arch)
    return trunk_from_state(arch, read_state_dict(checkpoint), str(checkpoint))


class ProjectionHead(nn.Sequential):
    """MoCo-v2's two-layer MLP: feature -> hidden (ReLU) -> embedding."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))


def info_nce(query: Tensor, key: Tensor, negatives: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """MoCo's InfoNCE on unit vectors: cross-entropy with the positive logit first. Returns (loss, logits).

    ``query``, ``key``: (N, D); ``negatives``: (K, D). The loss of row ``i`` is
    ``-log(exp(q_i.k_i / t) / (exp(q_i.k_i / t) + sum_j exp(q_i.n_j / t)))``, averaged over rows.
    """
    positive = (query * key).sum(dim=1, keepdim=True)
    logits = torch.cat([positive, query @ negatives.T], dim=1) / temperature
    labels = torch.zeros(query.shape[0], dtype=torch.long, device=query.device)
    return F.cross_entropy(logits, labels), logits


def gather_across_ranks(tensor: Tensor) -> Tensor:
    """All ranks' rows concatenated in rank order (the tensor itself when not distributed); no gradient."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


@dataclass(frozen=True)
class MoCoConfig:
    """The quality encoder and its contrastive training (paper values as defaults)."""

    arch: str = "resnet50"
    #: "random" (the paper trains the quality encoder from scratch) or "checkpoint" (start from ``checkpoint``).
    init: Literal["random", "checkpoint"] = "random"
    checkpoint: str | None = None
    embedding_dim: int = 128
    #: Hidden width of the MLP head (MoCo-v2 uses the trunk's feature width).
    hidden_dim: int = 2048
    queue_size: int = 65_536
    momentum: float = 0.999
    temperature: float = 0.2
    #: Key-encoder BatchNorm statistics over this many random groups of the key batch (MoCo's shuffling BN,
    #: done within the process): queries cannot find their keys through shared batch statistics.
    key_bn_groups: int = 4

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"arch must be one of {', '.join(ARCHITECTURES)}, got {self.arch!r}")
        if (self.init == "checkpoint") != (self.checkpoint is not None):
            raise ValueError(
                "init: checkpoint needs model.checkpoint (a local file; nothing can be downloaded), "
                "and model.checkpoint is only read with init: checkpoint"
            )
        if self.queue_size < 1 or self.embedding_dim < 1 or self.hidden_dim < 1 or self.key_bn_groups < 1:
            raise ValueError("queue_size, embedding_dim, hidden_dim and key_bn_groups must be positive")
        if not 0 <= self.momentum <= 1 or self.temperature <= 0:
            raise ValueError("momentum must be in [0, 1] and temperature positive")


class QualityMoCo(nn.Module):
    """Query encoder (trunk + head) trained by InfoNCE against a momentum key encoder and a queue of keys.

    ``forward({"query": (N, 3, S, S), "key": (N, 3, S, S)})`` returns ``{"loss", "accuracy"}``, where
    accuracy is the fraction of queries whose positive has the highest logit. In training mode it also
    moves the key encoder towards the query encoder and enqueues the (all-rank) keys, both after the loss.
    """

    def __init__(self, config: MoCoConfig, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        checkpoint = config.checkpoint if config.init == "checkpoint" else None
        self.trunk = load_trunk(config.arch, checkpoint, seed=seed)
        self.head = ProjectionHead(self.trunk.feature_dim, config.hidden_dim, config.embedding_dim)
        self.key_trunk = copy.deepcopy(self.trunk)
        self.key_head = copy.deepcopy(self.head)
        for parameter in [*self.key_trunk.parameters(), *self.key_head.parameters()]:
            parameter.requires_grad_(False)
        queue = F.normalize(torch.randn(config.queue_size, config.embedding_dim), dim=1)
        self.register_buffer("queue", queue)
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def encode_query(self, images: Tensor) -> Tensor:
        return F.normalize(self.head(self.trunk(images)).float(), dim=1)

    @torch.no_grad()
    def encode_key(self, images: Tensor) -> Tensor:
        """Keys with BatchNorm statistics per random group of the batch, returned in the input order."""
        groups = min(self.config.key_bn_groups, images.shape[0]) if self.training else 1
        if groups == 1:
            return F.normalize(self.key_head(self.key_trunk(images)).float(), dim=1)
        order = torch.randperm(images.shape[0], device=images.device)
        parts = [self.key_head(self.key_trunk(images[chunk])) for chunk in order.chunk(groups)]
        keys = torch.empty(images.shape[0], self.config.embedding_dim, device=images.device)
        keys[order] = torch.cat(parts).float()
        return F.normalize(keys, dim=1)

    @torch.no_grad()
    def momentum_update(self) -> None:
        """key = m * key + (1 - m) * query, for every parameter of trunk and head."""
        m = self.config.momentum
        pairs = zip(
            [*self.key_trunk.parameters(), *self.key_head.parameters()],
            [*self.trunk.parameters(), *self.head.parameters()],
            strict=True,
        )
        for key, query in pairs:
            key.mul_(m).add_(query.detach(), alpha=1 - m)

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Overwrite the oldest entries with ``keys`` (first in, first out), wrapping around the end."""
        size, count = self.queue.shape[0], keys.shape[0]
        dropped = max(0, count - size)  # more keys than slots: the first ones would be overwritten at once
        offsets = torch.arange(dropped, count, device=keys.device)
        self.queue[(self.queue_ptr + offsets) % size] = keys[dropped:].to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + count) % size)

    def forward(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        query = self.encode_query(batch["query"])
        if self.training:
            self.momentum_update()
        key = self.encode_key(batch["key"])
        loss, logits = info_nce(query, key, self.queue.clone().detach(), self.config.temperature)
        if self.training:
            self.enqueue(gather_across_ranks(key))
        accuracy = (logits.argmax(dim=1) == 0).float().mean()
        return {"loss": loss, "accuracy": accuracy.detach()}
