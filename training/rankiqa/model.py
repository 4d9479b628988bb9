"""The RankIQA network: torchvision's VGG-16 whose last layer gives one quality score.

Weights start from ImageNet (torchvision's release), a seeded random draw, or a local file: our
export, a bare safetensors file, or a torchvision VGG-16 state dict (its 1000-class layer is dropped).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models import vgg

from qualiclip_metric.checkpoint import read_state_dict, read_tensor_layout
from training.images import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
Architecture = Literal["vgg16", "vgg16_bn"]


@dataclass(frozen=True)
class ModelConfig:
    """Where the weights start."""

    #: "imagenet" (torchvision's VGG-16 weights, downloaded once), "random", or a local path: an export
    #: directory, a ``.safetensors`` file, or a torchvision state dict (``.pth``).
    init: str = "imagenet"
    init_seed: int = 0
    #: With ``init: imagenet``, start from random weights (with a warning) when the download fails,
    #: instead of stopping with an error. Off by default so that a baseline is never silently weaker.
    allow_random_fallback: bool = False
    #: "vgg16" is the paper's network; "vgg16_bn" (BatchNorm after each convolution) trains from scratch more easily.
    arch: Architecture = "vgg16"
    dropout: float = 0.5
    #: Width of fc6 and fc7 (4096 in VGG-16; ImageNet weights need it). Narrower layers make tests and
    #: smoke runs fast: fc6 alone holds 100 of VGG-16's 138 million parameters.
    fc_width: int = 4096

    def __post_init__(self) -> None:
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.fc_width < 1:
            raise ValueError(f"fc_width must be positive, got {self.fc_width}")


class RankIQANet(nn.Module):
    """Images in [0, 1], shaped (N, 3, H, W) with H, W >= 32, to scores (N,); higher is better."""

    def __init__(self, arch: Architecture = "vgg16", dropout: float = 0.5, fc_width: int = 4096) -> None:
        super().__init__()
        self.arch, self.fc_width = arch, fc_width
        # torchvision's VGG-16 layers and names (so its weights load), built without its 1000-way classifier.
        self.features = vgg.make_layers(vgg.cfgs["D"], batch_norm=arch == "vgg16_bn")
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, fc_width),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(fc_width, fc_width),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(fc_width, 1),
        )
        for module in self.modules():  # torchvision's initialisation of VGG
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images shaped (N, 3, H, W), got {tuple(images.shape)}")
        x = self.features((images - self.mean) / self.std)
        return self.classifier(torch.flatten(self.avgpool(x), 1)).squeeze(-1)

    def head_parameters(self) -> list[nn.Parameter]:
        """The fully connected layers (fc6, fc7, fc8): stage 2 trains them at a higher learning rate."""
        return list(self.classifier.parameters())

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.features.parameters())


def _imagenet_state(arch: Architecture) -> dict[str, Tensor]:
    weights = {"vgg16": torchvision.models.VGG16_Weights, "vgg16_bn": torchvision.models.VGG16_BN_Weights}[arch]
    return weights.IMAGENET1K_V1.get_state_dict(progress=False)


def read_state(path: str | Path) -> tuple[dict[str, Tensor], dict[str, object]]:
    """Weights and (for our export directories) the saved config from a local path; never unpickles code.

    An export directory's weights are checked against the sha256 its ``config.json`` records.

    Raises:
        CheckpointError: the file is missing or unreadable, or an export's file is damaged.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        tensors, config = read_tensor_layout(path, [WEIGHTS_FILE], config_file=CONFIG_FILE)
        return tensors[WEIGHTS_FILE], config
    return read_state_dict(path), {}


def load_into(model: RankIQANet, state: dict[str, Tensor], origin: str) -> None:
    """Load ``state``; an ImageNet classifier's 1000-way last layer is replaced by the fresh 1-output head."""
    head = f"classifier.{len(model.classifier) - 1}"
    if state.get(f"{head}.weight") is not None and state[f"{head}.weight"].shape[0] != 1:
        log.info(
            "%s: dropping its %d-way last layer; the 1-output head starts fresh",
            origin,
            state[f"{head}.weight"].shape[0],
        )
        state = {k: v for k, v in state.items() if not k.startswith(f"{head}.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or set(missing) != {f"{head}.weight", f"{head}.bias"}:
            raise ValueError(f"{origin}: not a {model.arch} state dict (missing {missing}, unexpected {unexpected})")
        return
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{origin}: does not fit {model.arch} with a 1-output head: {err}") from err


def _fresh(config: ModelConfig) -> RankIQANet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.init_seed)  # the fresh layers (all of them with init: random) are seeded
        return RankIQANet(config.arch, config.dropout, config.fc_width)


def build_model(config: ModelConfig) -> RankIQANet:
    """The network with the weights ``config.init`` names."""
    if config.init == "random":
        log.info("RankIQA: random initialisation (seed %d)", config.init_seed)
        return _fresh(config)
    if config.init == "imagenet":
        try:  # before building the network, so that a failed download fails fast
            state = _imagenet_state(config.arch)
        except Exception as err:  # urllib, hash and file errors all mean: no weights
            message = f"could not obtain torchvision's ImageNet {config.arch} weights ({type(err).__name__}: {err})"
            if not config.allow_random_fallback:
                raise RuntimeError(
                    f"{message}; without network access put the file in torch's hub cache, pass "
                    "model.init=PATH (a torchvision vgg16 .pth), or model.init=random "
                    "(or model.allow_random_fallback=true)"
                ) from err
            log.warning("%s; FALLING BACK TO RANDOM INITIALISATION (seed %d)", message, config.init_seed)
            return _fresh(config)
        model = _fresh(config)
        load_into(model, state, f"ImageNet {config.arch}")
        return model
    state, saved = read_state(config.init)
    for name in ("arch", "fc_width"):
        if saved.get(name, getattr(config, name)) != getattr(config, name):
            raise ValueError(
                f"model.init: {config.init} has {name} {saved[name]}, model.{name} is {getattr(config, name)}"
            )
    model = _fresh(config)
    load_into(model, state, config.init)
    return model
