"""The QualiCLIP network: CLIP RN50 image tower, antonym prompt features and the official score."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qualiclip_metric.backbone import AttentionPool, ModifiedResNet
from qualiclip_metric.config import (
    EMBED_DIM,
    PromptPair,
    QualiCLIPConfig,
    pair_name,
    validate_prompt_pairs,
)
from qualiclip_metric.errors import CheckpointError
from qualiclip_metric.inputs import as_image_batch, validate_threads
from qualiclip_metric.integrity import Verify
from qualiclip_metric.precision import PRECISIONS, Precision, compute_context, validate_precision
from qualiclip_metric.precision import cuda_tf32 as cuda_tf32  # re-exported: it lived here before precision.py
from qualiclip_metric.quality_map import DEFAULT_CHUNK_SIZE
from qualiclip_metric.quality_map import quality_map as _quality_map
from qualiclip_metric.runtimes import Backend, check_backend, validate_backend

if TYPE_CHECKING:
    from qualiclip_metric.checkpoint import Checkpoint
    from qualiclip_metric.runtimes import ExportedScorer


def build_image_tower() -> ModifiedResNet:
    """CLIP's RN50 image tower (the same for RN50 and RN50-quickgelu), with OpenAI's parameter names."""
    return ModifiedResNet(output_dim=EMBED_DIM)


def attention_pool(pool: AttentionPool, x: Tensor) -> Tensor:
    """``pool(x)``: CLIP's attention pooling without the positional embedding (see :class:`AttentionPool`)."""
    return pool(x)


def antonym_probabilities(features: Tensor, prompts_features: Tensor, scale: float) -> Tensor:
    """(N, P) softmax probability of each pair's positive prompt, from normalized features.

    ``prompts_features`` holds each pair's positive then negative prompt; ``scale`` multiplies the
    cosine similarities (the official 100 over the temperature).
    """
    logits = scale * features @ prompts_features.T
    return logits.unflatten(-1, (-1, 2)).softmax(dim=-1)[..., 0]


class QualiCLIP(nn.Module):
    """No-reference image quality: higher is better, in [0, 1].

    Takes float images in [0, 1] shaped (N, 3, H, W) or (3, H, W) at any resolution (31 pixels a
    side at least); CLIP normalization happens inside. Build it with :meth:`from_pretrained`.
    """

    def __init__(
        self,
        prompt_pairs: Sequence[PromptPair] | None = None,
        temperature: float | None = None,
        precision: Precision = "fp32",
        config: QualiCLIPConfig | None = None,
        fast: bool = False,
        compiled: bool = False,
        backend: Backend = "torch",
        threads: int | None = None,
    ) -> None:
        super().__init__()
        #: What the model scores with: prompt pairs, temperature and score scale are read from here, and
        #: :meth:`set_prompts`, :attr:`temperature` and :meth:`set_score_logit_scale` replace it (a copy of
        #: the ``config`` given, so the model never changes a checkpoint's config).
        self.config = replace(QualiCLIPConfig() if config is None else config)
        if prompt_pairs is not None:
            self.config = replace(self.config, prompt_pairs=validate_prompt_pairs(prompt_pairs))
        if temperature is not None:
            self.temperature = temperature
        #: Where the weights were read from (set by :meth:`from_pretrained`).
        self.source: str | None = None
        self.visual = build_image_tower()
        pairs = self.config.prompt_pairs
        # Normalized text features of the prompts, positive then negative for every pair.
        self.register_buffer("prompts_features", torch.zeros(2 * len(pairs), EMBED_DIM))
        # CLIP's learned scale, kept for lossless conversions; the official score uses a fixed 100.
        self.register_buffer("logit_scale", torch.tensor(math.log(self.config.score_logit_scale)))
        self.register_buffer("mean", torch.tensor(self.config.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.config.std).view(1, 3, 1, 1), persistent=False)
        self.precision = precision
        #: Recompute the residual stages in the backward pass instead of storing their activations.
        self.grad_checkpointing = False
        #: Score through an inference-only trunk with BatchNorm folded, channels-last and weights in the
        #: compute dtype (:mod:`qualiclip_metric.fused`); calls that need gradients take the standard path.
        self.fast = fast
        #: Like :attr:`fast`, with the trunk compiled by ``torch.compile`` (slow first call per input size).
        self.compiled = compiled
        self._fused_cache: tuple[tuple, Callable[[Tensor], Tensor]] | None = None
        #: Who computes the scores: "torch" (the reference, differentiable), "openvino" or
        #: "onnxruntime" (CPU only, no gradients; see :mod:`qualiclip_metric.runtimes`).
        self.backend = backend
        if backend != "torch" and (fast or compiled):
            raise ValueError("Arguments `fast` and `compiled` apply to the torch backend only")
        #: Threads of a non-torch backend; None follows ``torch.get_num_threads()`` at each call.
        self.threads = threads
        self._runtime_cache: tuple[tuple, ExportedScorer] | None = None
        self._trainable = False
        self.eval()
        self.requires_grad_(False)

    # -- configuration -------------------------------------------------------------------------

    @property
    def prompt_pairs(self) -> tuple[PromptPair, ...]:
        """The antonym pairs, positive prompt first (:attr:`config`'s; :meth:`set_prompts` changes them)."""
        return self.config.prompt_pairs

    @property
    def temperature(self) -> float:
        """Softmax temperature (:attr:`config`'s): 1 in the official scorer, 2 in pyiqa's numbers."""
        return self.config.temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        self.config = replace(self.config, temperature=value)  # validated by the config

    @property
    def score_logit_scale(self) -> float:
        """Multiplies cosine similarities before the softmax (:attr:`config`'s).

        100 in the official scorer; pyiqa uses exp(logit_scale) of the checkpoint instead (see
        :meth:`set_score_logit_scale`).
        """
        return self.config.score_logit_scale

    def set_score_logit_scale(self, value: float) -> None:
        """Score with ``value`` times the cosine similarities, e.g. ``float(model.logit_scale.exp())`` as pyiqa.

        Raises:
            ValueError: ``value`` is not a positive finite number.
        """
        self.config = replace(self.config, score_logit_scale=value)  # validated by the config

    @property
    def precision(self) -> Precision:
        return self._precision

    @precision.setter
    def precision(self, value: Precision) -> None:
        self._precision = validate_precision(value)

    @property
    def backend(self) -> Backend:
        return self._backend

    @backend.setter
    def backend(self, value: Backend) -> None:
        self._backend = validate_backend(value)

    @property
    def threads(self) -> int | None:
        return self._threads

    @threads.setter
    def threads(self, value: int | None) -> None:
        self._threads = validate_threads(value)

    @property
    def pair_names(self) -> list[str]:
        """Names of the antonym pairs, in the column order of :meth:`pair_probabilities`."""
        return [pair_name(pair) for pair in self.prompt_pairs]

    @property
    def device(self) -> torch.device:
        return self.prompts_features.device

    def set_trainable(self, enable: bool = True) -> QualiCLIP:
        """Let :meth:`train` switch BatchNorm to batch statistics and the image tower receive gradients.

        A metric must not change its own scores: by default ``train()`` (also an enclosing module's)
        leaves the model in evaluation mode, and its weights are frozen. Fine-tuning, as ``training/``
        does, starts with ``model.set_trainable()``.
        """
        self._trainable = enable
        self.visual.requires_grad_(enable)
        if not enable:
            self.eval()
        return self

    @property
    def trainable(self) -> bool:
        """Whether :meth:`set_trainable` allowed training; False for a metric."""
        return self._trainable

    def train(self, mode: bool = True) -> QualiCLIP:
        """Training mode only after :meth:`set_trainable`; otherwise the model stays in evaluation mode."""
        return super().train(mode and self._trainable)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Trade compute for memory when differentiating (losses on large images, training)."""
        self.grad_checkpointing = enable

    def extra_repr(self) -> str:
        mode = ", compiled" if self.compiled else ", fast" if self.fast else ""
        mode += f", backend={self.backend!r}" if self.backend != "torch" else ""
        return f"pairs={len(self.prompt_pairs)}, temperature={self.temperature}, precision={self.precision!r}{mode}"

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fused_cache"] = None  # rebuilt on demand; a compiled trunk cannot be copied or pickled
        state["_runtime_cache"] = None  # nor can a compiled OpenVINO or onnxruntime model
        return state

    # -- scoring -------------------------------------------------------------------------------

    def _compute_context(self, device_type: str, autocast: bool = True) -> contextlib.ExitStack:
        """The numeric mode of :attr:`precision`; with "fp32", a caller's own autocast stays in force."""
        return compute_context(self.precision, device_type, autocast=autocast)

    def _fused_trunk(self, x: Tensor) -> Callable[[Tensor], Tensor] | None:
        """The fast trunk for ``x``, or None where the standard path runs (off, or gradients needed).

        It is rebuilt whenever the device, dtype or any weight of the tower changes.
        """
        if not (self.fast or self.compiled):
            return None
        tower = self.visual.state_dict(keep_vars=True).values()
        if torch.is_grad_enabled() and (x.requires_grad or any(t.requires_grad for t in tower)):
            return None
        dtype = PRECISIONS[self.precision] or torch.float32
        key = (x.device, dtype, self.compiled, tuple(_identity(t) for t in tower))
        if self._fused_cache is None or self._fused_cache[0] != key:
            from qualiclip_metric.fused import build_fused_trunk

            self._fused_cache = None  # release the old copy before building the new one
            self._fused_cache = (key, build_fused_trunk(self.visual, dtype, compiled=self.compiled))
        return self._fused_cache[1]

    def _runtime(self, x: Tensor) -> ExportedScorer | None:
        """The compiled scorer of a non-torch backend for ``x``, or None on the torch backend.

        It is rebuilt (from the conversion cache) whenever the weights, prompts, temperature, score
        scale, precision or thread count change.
        """
        if self.backend == "torch":
            return None
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters())):
            raise RuntimeError(
                f"the {self.backend} backend computes no gradients; use backend='torch' to differentiate the score"
            )
        if x.device.type != "cpu" or self.device.type != "cpu":
            where = x.device if x.device.type != "cpu" else self.device
            raise RuntimeError(f"the {self.backend} backend runs on the CPU, not on {where}; use backend='torch' there")
        threads = self.threads or torch.get_num_threads()
        tensors = (*self.state_dict(keep_vars=True).values(), self.mean, self.std)
        key = (self.backend, self.precision, threads, self.temperature, self.score_logit_scale)
        key += tuple(_identity(t) for t in tensors)
        if self._runtime_cache is None or self._runtime_cache[0] != key:
            from qualiclip_metric.runtimes import load_runtime

            self._runtime_cache = None  # release the old one before compiling the new one
            self._runtime_cache = (key, load_runtime(self, self.backend, self.precision, threads))
        return self._runtime_cache[1]

    def image_features(self, images: Tensor, check_range: bool = True) -> Tensor:
        """L2-normalized, quality-aware 1024-d image embeddings, shape (N, 1024).

        ``check_range=False`` accepts values outside [0, 1] (network outputs that overshoot).
        """
        x = as_image_batch(images, check_range=check_range)
        runtime = self._runtime(x)
        return runtime(x)["features"] if runtime is not None else self._torch_features(x)

    def _torch_features(self, x: Tensor) -> Tensor:
        x = (x.to(self.mean.dtype) - self.mean) / self.std
        fused = self._fused_trunk(x)
        if fused is not None:
            with self._compute_context(x.device.type, autocast=False):
                features = self.visual.attnpool(fused(x).to(self.mean.dtype))
            return F.normalize(features.float(), dim=-1)
        with self._compute_context(x.device.type):
            x = x.to(self.visual.conv1.weight.dtype) if not torch.is_autocast_enabled(x.device.type) else x
            features = self.visual(x, checkpointing=self.grad_checkpointing)
        return F.normalize(features.float(), dim=-1)

    def pair_probabilities_from_features(self, features: Tensor) -> Tensor:
        """(N, P) probability of the positive prompt of every antonym pair, from normalized features.

        Always float32 (float64 for float64 features), also under a caller's autocast.
        """
        with torch.autocast(features.device.type, enabled=False):
            features = features if features.dtype == torch.float64 else features.float()
            prompts = self.prompts_features.to(device=features.device, dtype=features.dtype)
            return antonym_probabilities(features, prompts, self.score_logit_scale / self.temperature)

    def pair_probabilities(self, images: Tensor, check_range: bool = True) -> Tensor:
        """(N, P) probability of the positive prompt of each pair; columns named by :attr:`pair_names`."""
        x = as_image_batch(images, check_range=check_range)
        runtime = self._runtime(x)
        if runtime is not None:
            return runtime(x)["probabilities"]
        return self.pair_probabilities_from_features(self._torch_features(x))

    def forward(self, images: Tensor, check_range: bool = True) -> Tensor:
        """(N,) quality scores in [0, 1]; the mean positive probability over the antonym pairs."""
        x = as_image_batch(images, check_range=check_range)
        runtime = self._runtime(x)
        if runtime is not None:
            return runtime(x)["scores"]
        return self.pair_probabilities_from_features(self._torch_features(x)).mean(dim=-1)

    def quality_map(
        self,
        images: Tensor,
        patch: int = 224,
        stride: int = 112,
        *,
        per_pair: bool = False,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        data_range: float = 1.0,
    ) -> Tensor:
        """Where an image is good or bad: the score of every window, (N, rows, cols) or (N, P, rows, cols).

        Cell (i, j) is ``self(crop)`` of the ``patch``-pixel window at ``(i * stride, j * stride)``, the last
        row and column aligned to the bottom and right borders; ``per_pair`` gives the pair probabilities
        instead. Arguments, memory and gradients: :func:`qualiclip_metric.quality_map.quality_map`.

        Raises:
            ValueError: invalid images, or ``patch``, ``stride``, ``chunk_size`` not positive integers, or
                ``stride > patch``.

        Examples:
            >>> model.quality_map(torch.rand(3, 500, 500)).shape  # doctest: +SKIP
            torch.Size([1, 4, 4])
        """
        options = {"per_pair": per_pair, "chunk_size": chunk_size, "data_range": data_range}
        return _quality_map(self, images, patch, stride, **options)

    # -- weights -------------------------------------------------------------------------------

    def set_prompts(self, prompt_pairs: Sequence[PromptPair], features: Tensor) -> None:
        """Replace the antonym pairs and their (2P, 1024) text features (normalized here)."""
        pairs = validate_prompt_pairs(prompt_pairs)
        if not torch.isfinite(features).all():
            raise CheckpointError("prompt features hold NaN or Inf values; the text tower is corrupt")
        if features.shape != (2 * len(pairs), EMBED_DIM):
            raise ValueError(
                f"prompt features for {len(pairs)} pairs must have shape ({2 * len(pairs)}, {EMBED_DIM}), "
                f"got {tuple(features.shape)}"
            )
        self.config = replace(self.config, prompt_pairs=pairs)
        self.prompts_features = F.normalize(features.detach().float(), dim=-1).to(self.device)

    def load_image_state(self, state: Mapping[str, Tensor], origin: str = "state dict") -> None:
        """Load image tower and prompt features, refusing partial or mis-shaped state."""
        expected = {key: value.shape for key, value in self.state_dict().items()}
        expected.pop("prompts_features")  # its length follows the number of prompt pairs
        optional = {key for key in expected if key.endswith("num_batches_tracked")}
        missing = sorted(set(expected) - set(state) - optional)
        unexpected = sorted(set(state) - set(expected) - {"prompts_features"})
        wrong_shape = [
            f"{key}: file has {tuple(state[key].shape)}, model expects {tuple(shape)}"
            for key, shape in expected.items()
            if key in state and state[key].shape != shape
        ]
        prompts = state.get("prompts_features")
        if prompts is None:
            missing.append("prompts_features")
        elif prompts.shape != (2 * len(self.prompt_pairs), EMBED_DIM):
            wrong_shape.append(
                f"prompts_features: file has {tuple(prompts.shape)}, {len(self.prompt_pairs)} prompt pairs "
                f"need ({2 * len(self.prompt_pairs)}, {EMBED_DIM})"
            )
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing keys ({_preview(missing)})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys ({_preview(unexpected)})")
        if wrong_shape:
            problems.append(f"{len(wrong_shape)} wrong shapes ({_preview(wrong_shape)})")
        if problems:
            raise CheckpointError(f"{origin}: not a QualiCLIP RN50 checkpoint: " + "; ".join(problems))
        not_finite = sorted(k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all())
        if not_finite:
            raise CheckpointError(
                f"{origin}: {len(not_finite)} tensors hold NaN or Inf values ({_preview(not_finite)}); "
                "the file is corrupt"
            )
        with torch.no_grad():
            for key, value in self.state_dict().items():
                if key in state:
                    value.copy_(state[key])
        self.prompts_features = self.prompts_features.contiguous()

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: Checkpoint,
        *,
        prompts: Sequence[PromptPair] | None = None,
        temperature: float | None = None,
        precision: Precision = "fp32",
        fast: bool = False,
        compiled: bool = False,
        backend: Backend = "torch",
        threads: int | None = None,
    ) -> QualiCLIP:
        """Build the model from tensors already read from disk (see :mod:`qualiclip_metric.checkpoint`)."""
        config = checkpoint.config
        with torch.device("meta"):
            model = cls(
                config=config,
                temperature=temperature,
                precision=precision,
                fast=fast,
                compiled=compiled,
                backend=backend,
                threads=threads,
            )
        # Like ``to_empty``, but with plain ``torch.empty``: ``empty_like`` on meta tensors imports sympy (~1 s).
        model._apply(lambda tensor: torch.empty(tensor.shape, dtype=tensor.dtype))
        model.mean.copy_(torch.tensor(config.mean).view(1, 3, 1, 1))
        model.std.copy_(torch.tensor(config.std).view(1, 3, 1, 1))
        model.load_image_state(checkpoint.image_state, origin=checkpoint.origin)
        if prompts is not None:
            from qualiclip_metric.text import encode_prompt_pairs

            if checkpoint.text_state is None:
                raise CheckpointError(f"{checkpoint.origin}: custom prompts need the text tower, which it lacks")
            pairs = validate_prompt_pairs(prompts)
            model.set_prompts(pairs, encode_prompt_pairs(pairs, checkpoint.text_state, origin=checkpoint.origin))
        return model

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path | None = None,
        *,
        prompt_learner: str | Path | None = None,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        prompts: Sequence[PromptPair] | None = None,
        temperature: float | None = None,
        precision: Precision = "fp32",
        fast: bool = False,
        compiled: bool = False,
        backend: Backend = "torch",
        threads: int | None = None,
        device: str | torch.device | None = None,
        verify: Verify = True,
    ) -> QualiCLIP:
        """Load QualiCLIP weights.

        Args:
            source: a registry name (``None`` is ``"qualiclip"``; see
                :func:`qualiclip_metric.list_pretrained`), ``"hf-hub:ORG/REPO[@REVISION]"``, a folder in
                the package's layout, a ``.safetensors`` file, or an official/pyiqa ``.pth``.
            prompt_learner: a QualiCLIP+ prompt learner in pyiqa's file layout; its learned prompts are
                encoded with the text tower of ``source`` and replace the antonym prompts.
            revision: branch, tag or commit of an ``hf-hub:`` source (registry names are pinned).
            cache_dir: Hugging Face hub cache to use instead of ``HF_HUB_CACHE``.
            local_files_only: never download (like ``HF_HUB_OFFLINE=1``).
            prompts: antonym pairs that replace the seven defaults; they need the text tower.
            temperature: softmax temperature; default the checkpoint's (1, or 2 for QualiCLIP+).
            precision: "fp32" (strict), "tf32", "bf16" or "fp16".
            fast: score through the inference-only trunk (see :attr:`fast`); ``compiled`` also compiles it.
            backend: "torch" (the reference, differentiable), or "openvino" / "onnxruntime": the whole
                score converted once (cached on disk) and run by that runtime on the CPU, without gradients.
                :func:`qualiclip_metric.fastest_configuration` says which is fastest here.
            threads: threads of a non-torch backend (default ``torch.get_num_threads()``).
            device: where to put the model.
            verify: check every file's sha256: ``True`` trusts a file verified before and unchanged since,
                ``"always"`` hashes every time, ``False`` never does.

        Raises:
            WeightsNotFoundError: the weights cannot be had from here (the message lists what was tried).
            CheckpointError: a file is corrupt, differs from its recorded hash, or is not QualiCLIP.
            ValueError: an option that cannot apply (a backend that is not installed, or cannot run
                ``precision`` or ``device``).

        Examples:
            >>> model = QualiCLIP.from_pretrained("qualiclip+-spaq")  # doctest: +SKIP
            >>> fast = QualiCLIP.from_pretrained(backend="openvino", precision="bf16")  # doctest: +SKIP
        """
        from qualiclip_metric.weights import load_checkpoint

        check_backend(backend, precision, device)  # before any download

        checkpoint = load_checkpoint(
            source,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            need_text=prompts is not None,
            verify=verify,
            prompt_learner=prompt_learner,
        )
        model = cls.from_checkpoint(
            checkpoint,
            prompts=prompts,
            temperature=temperature,
            precision=precision,
            fast=fast,
            compiled=compiled,
            backend=backend,
            threads=threads,
        )
        model.source = checkpoint.origin
        return model.to(device) if device is not None else model


def _identity(tensor: Tensor) -> tuple[int, int]:
    """Storage and in-place-update count: changes whenever the tensor's values may have changed."""
    if tensor.is_inference():  # inference tensors keep no version counter; they cannot be updated in place either
        return tensor.data_ptr(), -1
    return tensor.data_ptr(), tensor._version


def _preview(items: list[str], limit: int = 4) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... and {len(items) - limit} more" if len(items) > limit else "")
