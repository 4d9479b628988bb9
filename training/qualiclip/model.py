"""The network QualiCLIP fine-tunes: the library's scorer, started from CLIP RN50 weights of any origin.

Only the image tower learns. The text tower serves once, to compute the prompt features, and is kept
for the export (the official layout holds all of CLIP).
"""

from __future__ import annotations

import math
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from qualiclip_metric.checkpoint import Checkpoint, StateDict, split_state
from qualiclip_metric.config import DEFAULT_PROMPT_PAIRS, QualiCLIPConfig
from qualiclip_metric.errors import CheckpointError
from qualiclip_metric.model import QualiCLIP
from qualiclip_metric.text import create_clip, encode_prompt_pairs
from training.qualiclip.losses import QualiCLIPLossConfig, prompt_similarities, qualiclip_losses


@dataclass(frozen=True)
class ModelConfig:
    """Where the weights start and how BatchNorm behaves while the image tower learns."""

    #: "openai" (CLIP RN50 through open_clip, downloaded once), "random", or a local/Hub source: OpenAI's
    #: TorchScript ``RN50.pt``, an open_clip state dict (.safetensors/.bin/.pt), or any QualiCLIP checkpoint.
    init: str = "openai"
    #: Seed of the random initialisation (``init: random``).
    init_seed: int = 0
    prompt_pairs: tuple[tuple[str, str], ...] = DEFAULT_PROMPT_PAIRS
    #: "frozen": BatchNorm uses its stored statistics (only its affine parameters learn); "batch": batch
    #: statistics in training (SyncBatchNorm across GPUs), the running averages updated.
    batchnorm: Literal["frozen", "batch"] = "frozen"


def _read_torchscript(path: Path) -> StateDict:
    """OpenAI's own ``RN50.pt`` is a TorchScript archive; its state dict has the usual CLIP names."""
    with warnings.catch_warnings():  # TorchScript is deprecated, but it is the format OpenAI published
        warnings.simplefilter("ignore", FutureWarning)
        archive = torch.jit.load(str(path), map_location="cpu")
    return {key: value.float() for key, value in archive.state_dict().items()}


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") for name in archive.namelist())


def load_clip_weights(init: str, seed: int = 0, need_text: bool = False) -> Checkpoint:
    """Image and text state of CLIP RN50 (or a QualiCLIP checkpoint) from ``init``.

    A QualiCLIP layout folder or Hub release gives its text tower only with ``need_text``.
    """
    if init == "random":
        torch.manual_seed(seed)
        state = create_clip(None).state_dict()
        image, text = split_state(state, "random initialisation")
        return Checkpoint(image, text, QualiCLIPConfig(), origin=f"random (seed {seed})")
    if init == "openai":
        try:
            state = create_clip("openai").state_dict()
        except Exception as err:  # open_clip raises many kinds of errors for a failed download
            raise CheckpointError(
                f"could not load OpenAI's CLIP RN50 weights through open_clip ({type(err).__name__}: {err}); "
                "without network access pass model.init=PATH (OpenAI's RN50.pt, an open_clip RN50 file or a "
                "QualiCLIP checkpoint), or model.init=random"
            ) from err
        image, text = split_state(state, "OpenAI CLIP RN50")
        return Checkpoint(image, text, QualiCLIPConfig(), origin="openai")
    path = Path(init).expanduser()
    if path.is_file() and _is_torchscript(path):
        image, text = split_state(_read_torchscript(path), str(path))
        return Checkpoint(image, text, QualiCLIPConfig(), origin=str(path))
    from qualiclip_metric.weights import load_checkpoint

    return load_checkpoint(init, need_text=need_text)


def build_scorer(config: ModelConfig) -> tuple[QualiCLIP, StateDict | None]:
    """The scorer with the image tower of ``config.init`` and freshly encoded prompt features, and the text tower."""
    checkpoint = load_clip_weights(config.init, config.init_seed)
    pairs = tuple(tuple(pair) for pair in config.prompt_pairs)
    image_state = dict(checkpoint.image_state)
    if checkpoint.text_state is not None:
        image_state["prompts_features"] = encode_prompt_pairs(pairs, checkpoint.text_state, origin=checkpoint.origin)
    elif "prompts_features" not in image_state or pairs != tuple(checkpoint.config.prompt_pairs):
        raise CheckpointError(
            f"{checkpoint.origin}: has no text tower, so the prompt features of {len(pairs)} pairs cannot be computed"
        )
    image_state.setdefault("logit_scale", torch.tensor(math.log(100.0)))  # CLIP's trained value
    config_out = QualiCLIPConfig(prompt_pairs=pairs, provenance={"init": checkpoint.origin})
    scorer = QualiCLIP.from_checkpoint(Checkpoint(image_state, None, config_out, checkpoint.origin))
    return scorer, checkpoint.text_state


class QualiCLIPTrainingModule(nn.Module):
    """Maps a batch of degraded crop pairs ``(B, 2, L, 3, S, S)`` to the QualiCLIP losses."""

    def __init__(
        self,
        scorer: QualiCLIP,
        loss: QualiCLIPLossConfig,
        batchnorm: str = "frozen",
        text_state: StateDict | None = None,
    ) -> None:
        super().__init__()
        self.scorer = scorer
        self.loss_config = loss
        self.batchnorm = batchnorm
        #: Kept outside the state dict: frozen, and only needed to export the official layout.
        self.text_state = text_state
        scorer.set_trainable(True)  # fine-tuning: batch statistics and gradients for the image tower
        # The score never adds the attention pool's positional embedding (any H x W works): nothing to learn.
        scorer.visual.attnpool.positional_embedding.requires_grad_(False)

    def train(self, mode: bool = True) -> QualiCLIPTrainingModule:
        super().train(mode)
        if mode and self.batchnorm == "frozen":
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.scorer.set_grad_checkpointing(enable)

    def similarities(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Cosine similarities to the positive and the negative prompts, each (..., P)."""
        features = self.scorer.image_features(images.flatten(0, -4))
        positive, negative = prompt_similarities(features, self.scorer.prompts_features)
        return positive.unflatten(0, images.shape[:-3]), negative.unflatten(0, images.shape[:-3])

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        if images.ndim != 6 or images.shape[1] != 2:
            raise ValueError(f"expected crop pairs shaped (B, 2, L, 3, S, S), got {tuple(images.shape)}")
        return qualiclip_losses(*self.similarities(images), self.loss_config)

    def export_checkpoint(self, provenance: dict[str, object]) -> Checkpoint:
        """The trained weights in the library's checkpoint form (image tower, prompt features, text tower)."""
        state = {key: value.detach().cpu().clone() for key, value in self.scorer.state_dict().items()}
        config = QualiCLIPConfig(prompt_pairs=self.scorer.prompt_pairs, provenance=provenance)
        return Checkpoint(state, self.text_state, config, origin="training")
