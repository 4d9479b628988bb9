"""The training engine shared by QualiCLIP, RankIQA and Re-IQA.

A :class:`Task` says what to train (model, data, losses, validation, export); :class:`Trainer` does
the rest the same way for every task: AdamW or SGD with warm-up and cosine (or step) decay, automatic
mixed precision, optional gradient checkpointing, DDP under ``torchrun`` (NCCL on GPUs, gloo on CPUs),
atomic checkpoints, exact resume, a progress bar, JSONL metrics and periodic validation.

Exact resume rests on one rule: the data of a step is a function of ``(seed, step)`` alone. The global
batch of step ``s`` is a slice of a seeded permutation of the dataset for epoch ``s // steps_per_epoch``;
rank ``r`` of ``W`` takes the ``r``-th equal part of it, and datasets build every item from
``(epoch, index)``. A run resumed at step ``s`` therefore sees exactly the batches it would have seen,
and ``W`` processes see the same global batch as one process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import pickle
import random
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from qualiclip_metric.distributed import Ranks, init_process_group, ranks_from_environment
from qualiclip_metric.errors import ImageLoadError
from qualiclip_metric.precision import Precision, cuda_tf32
from training import config as config_io
from training.errors import TrainingError, TrainingStateError

CHECKPOINT_PATTERN = re.compile(r"step_(\d+)\.pt$")
#: Marks a training state file; loading checks it, so a file of another kind is refused by name.
STATE_FORMAT = "qualiclip-metric-training-state"
STATE_VERSION = 1
STATE_KEYS = ("step", "model", "optimizer", "scheduler", "scaler", "rng", "batch_size", "world_size")
#: Consecutive unreadable items tried before a batch gives up (a substitute is the next item).
MAX_SKIPPED_IN_A_ROW = 32
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    """How to optimise; shared by every trainer. ``batch_size`` is the global batch, split across ranks."""

    output_dir: str = "runs/train"
    steps: int = 1000
    batch_size: int = 8
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-5
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.9  # sgd only
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_steps: int = 0
    #: Cosine decay ends at ``lr * min_lr_ratio``.
    min_lr_ratio: float = 0.0
    #: Step decay: multiply by ``lr_gamma`` every ``lr_step_size`` steps.
    lr_step_size: int = 10_000
    lr_gamma: float = 0.1
    grad_clip: float | None = None
    precision: Precision = "fp32"
    gradient_checkpointing: bool = False
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    #: Validate every this many steps (0: only at the end); validation runs on rank 0.
    validate_every: int = 0
    validate_at_start: bool = False
    num_workers: int = 2
    seed: int = 0
    device: str = "auto"
    #: "auto" continues from the newest checkpoint in ``output_dir`` if there is one; "never"; or a path.
    resume: str = "auto"
    #: End this process after this step (for time-limited jobs); a later run resumes from it.
    stop_at_step: int | None = None
    progress: bool = True
    #: Under DDP on GPUs, turn BatchNorm into SyncBatchNorm (batch statistics over the global batch).
    sync_batchnorm: bool = True
    #: Under DDP, copy rank 0's buffers to every rank before each forward (off for large per-rank queues).
    broadcast_buffers: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every", "log_every", "keep_checkpoints", "lr_step_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_steps < 0 or self.validate_every < 0:
            raise ValueError("lr must be positive; weight_decay, warmup_steps and validate_every non-negative")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")


class Task(Protocol):
    """What a trainer needs from a model family. ``build_model``'s module maps a batch to its losses."""

    def build_model(self) -> nn.Module:
        """The trainable module; ``module(batch)`` returns a dict of scalar losses with a ``"loss"`` key."""

    def build_dataset(self) -> Dataset:
        """Items addressed by ``(epoch, index)`` and built from that key alone."""

    def collate(self, items: list[Any]) -> Any: ...

    def param_groups(self, model: nn.Module, lr: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups (e.g. a 10x learning rate on a head); each may set ``lr``."""

    def validate(self, model: nn.Module) -> dict[str, float]:
        """Metrics on held-out data, computed on rank 0 with the unwrapped model in eval mode."""

    def export(self, model: nn.Module, directory: Path) -> None:
        """Write the trained model in its release layout(s)."""


class BaseTask:
    """A :class:`Task` with the engine's defaults; a task subclasses it and overrides what differs.

    ``collate`` stacks items with torch's ``default_collate`` unless a subclass names its own function
    (``collate = staticmethod(collate_pairs)``); ``param_groups`` puts every trainable parameter at the
    engine's learning rate, with weight decay on weight matrices and kernels only (:func:`decay_groups`).
    """

    def collate(self, items: list[Any]) -> Any:
        from torch.utils.data import default_collate

        return default_collate(items)

    def param_groups(self, model: nn.Module, lr: float) -> list[dict[str, Any]]:
        return decay_groups(model)


# ------------------------------------------------------------------------------------ distributed setup


def init_distributed(device_name: str) -> tuple[Ranks, torch.device]:
    """Join the process group that ``torchrun`` describes in the environment; pick this rank's device."""
    ranks = ranks_from_environment()
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    init_process_group(ranks, device)
    return ranks, device


def barrier(setup: Ranks) -> None:
    if setup.enabled:
        dist.barrier()


# --------------------------------------------------------------------------------------- data by step


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """This rank's part of the global batch of every step from ``start`` to ``stop``, as (epoch, index) keys."""

    def __init__(self, dataset_size: int, global_batch: int, start: int, stop: int, seed: int, setup: Ranks) -> None:
        if global_batch % setup.world_size:
            raise TrainingError(f"batch_size {global_batch} is not divisible by the {setup.world_size} processes")
        if dataset_size < global_batch:
            raise TrainingError(f"the dataset has {dataset_size} items, fewer than one batch of {global_batch}")
        self.size, self.batch, self.start, self.stop, self.seed = dataset_size, global_batch, start, stop, seed
        self.local = global_batch // setup.world_size
        self.rank = setup.rank
        self.steps_per_epoch = dataset_size // global_batch

    def global_batch(self, step: int) -> tuple[int, list[int]]:
        """The epoch and dataset indices of the global batch of ``step``."""
        epoch, position = divmod(step, self.steps_per_epoch)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(self.size, generator=generator)
        return epoch, order[position * self.batch : (position + 1) * self.batch].tolist()

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.stop):
            epoch, indices = self.global_batch(step)
            mine = indices[self.rank * self.local : (self.rank + 1) * self.local]
            yield [(epoch, index) for index in mine]

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def move_to(batch: Any, device: torch.device) -> Any:
    """Tensors of a (nested) batch moved to ``device``; everything else unchanged."""
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {key: move_to(value, device) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(value, device) for value in batch)
    return batch


class SkipUnreadable(Dataset):
    """A task's dataset whose unreadable items are replaced by the next readable one.

    The replacement depends on the key alone, so a resumed run sees the same data; the items skipped
    travel with the batch so that the main process can count and log them.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Any, list[str]]:
        epoch, index = key
        skipped: list[str] = []
        for offset in range(MAX_SKIPPED_IN_A_ROW):
            try:
                return self.dataset[epoch, (index + offset) % len(self.dataset)], skipped
            except ImageLoadError as err:
                skipped.append(str(err))
        raise TrainingError(f"{MAX_SKIPPED_IN_A_ROW} items in a row cannot be read; the last: {skipped[-1]}")


class CollateWithSkips:
    """The task's collate over the items, and the messages of the items :class:`SkipUnreadable` replaced."""

    def __init__(self, collate: Any) -> None:
        self.collate = collate

    def __call__(self, items: list[tuple[Any, list[str]]]) -> tuple[Any, list[str]]:
        return self.collate([item for item, _ in items]), [message for _, messages in items for message in messages]


# --------------------------------------------------------------------------------- optimisation parts


def learning_rate_factor(config: EngineConfig, step: int) -> float:
    """Multiplier of the base learning rate at ``step``: linear warm-up, then the chosen decay."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return 1.0
    if config.schedule == "step":
        return config.lr_gamma ** ((step - config.warmup_steps) // config.lr_step_size)
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def decay_groups(model: nn.Module, **options: Any) -> list[dict[str, Any]]:
    """Trainable parameters in two groups: weight decay on weight matrices and kernels, none on biases and norms."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if parameter.ndim > 1 else no_decay).append(parameter)
    groups = [{"params": decay, **options}, {"params": no_decay, "weight_decay": 0.0, **options}]
    return [group for group in groups if group["params"]]


def build_optimizer(config: EngineConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    for group in groups:
        group.setdefault("lr", config.lr)
        group["initial_lr"] = group["lr"]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from any parts, the same in every process and Python version (``hash`` is salted)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every generator's state as tensors and plain values, so that it loads with ``weights_only=True``."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["name"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -------------------------------------------------------------------------------------- checkpoints


def checkpoint_paths(directory: Path) -> list[Path]:
    """Complete checkpoints in ``directory``, oldest first (partial files never carry the final name)."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := CHECKPOINT_PATTERN.search(p.name))]
    return [path for _, path in sorted(found)]


def save_atomically(state: dict[str, Any], path: Path) -> None:
    """Write to a temporary file in the same folder, flush it to disk, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def load_training_state(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint written by :class:`Trainer`: tensors, numbers, strings and containers of them.

    Read with ``weights_only=True``: no file, however crafted, can make loading run code. Raises
    :class:`TrainingStateError` for empty, truncated or foreign files.
    """
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise TrainingStateError(f"{path}: empty file, not a training checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError, KeyError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        if isinstance(err, pickle.UnpicklingError) or "weights_only" in str(err):
            reason = f"it holds objects other than tensors and plain values, which are never unpickled ({reason})"
        message = f"{path}: not a readable training checkpoint (truncated or corrupt?): {reason}"
        raise TrainingStateError(message) from err
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise TrainingStateError(f"{path}: not a training checkpoint written by this engine")
    if state.get("version") != STATE_VERSION:
        raise TrainingStateError(f"{path}: training state version {state.get('version')!r}, expected {STATE_VERSION}")
    missing = [key for key in STATE_KEYS if key not in state]
    if missing:
        raise TrainingStateError(f"{path}: incomplete training checkpoint (missing {', '.join(missing)})")
    return state


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# --------------------------------------------------------------------------------------------- logging


class MetricsLog:
    """One JSON object per line; only rank 0 writes."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _mean_across_ranks(values: dict[str, float], setup: Ranks, device: torch.device) -> dict[str, float]:
    if not setup.enabled:
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[key] for key in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return {key: float(value) / setup.world_size for key, value in zip(keys, tensor.tolist(), strict=True)}


# --------------------------------------------------------------------------------------------- trainer


class Trainer:
    """Runs a :class:`Task` with an :class:`EngineConfig`; ``full_config`` is saved beside the outputs."""

    def __init__(self, task: Task, config: EngineConfig, full_config: Any = None) -> None:
        self.task, self.config, self.full_config = task, config, full_config
        self.setup, self.device = init_distributed(config.device)
        self.output_dir = Path(config.output_dir)
        self.checkpoint_dir = self.output_dir / "checkpoints"
        self.log = MetricsLog(self.output_dir / "metrics.jsonl", self.setup.is_main)
        self._numerics = contextlib.ExitStack()

    # -- set-up ---------------------------------------------------------------------------------

    def _build(self) -> None:
        config = self.config
        seed_everything(config.seed + self.setup.rank)
        if self.device.type == "cuda":  # TF32 only when asked for, through the same switch as the library's
            self._numerics.enter_context(cuda_tf32(config.precision == "tf32"))
        model = self.task.build_model().to(self.device)
        if config.gradient_checkpointing:
            if not hasattr(model, "set_grad_checkpointing"):
                raise ValueError(f"{type(model).__name__} does not support gradient checkpointing")
            model.set_grad_checkpointing(True)
        self.model = model
        self.optimizer = build_optimizer(config, self.task.param_groups(model, config.lr))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: learning_rate_factor(config, step)
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.precision == "fp16")
        self.step = 0

    def _resume_state(self) -> tuple[Path, dict[str, Any]] | tuple[None, None]:
        """The checkpoint to continue from and its state; with ``resume: auto`` the newest valid one."""
        found = checkpoint_paths(self.checkpoint_dir)
        if self.config.resume == "never":
            if found:  # a new run would overwrite and prune them
                raise TrainingError(
                    f"engine.resume=never, but {self.checkpoint_dir} already holds {len(found)} checkpoints of "
                    "another run; choose a new engine.output_dir, or resume=auto to continue it"
                )
            return None, None
        if self.config.resume != "auto":
            path = Path(self.config.resume)
            if not path.is_file():
                raise TrainingError(f"engine.resume: {path} does not exist")
            return path, load_training_state(path)
        skipped = []
        for path in reversed(found):
            try:
                state = load_training_state(path)
            except TrainingStateError as err:
                skipped.append(path)
                log.warning("resume: skipping %s", err)
                continue
            if skipped:
                log.warning("resume: continuing from %s, the newest valid checkpoint", path.name)
            return path, state
        if skipped:
            raise TrainingError(
                f"resume: none of the {len(skipped)} checkpoints in {self.checkpoint_dir} can be read; "
                "move them away to start afresh, or set engine.resume to a valid one"
            )
        return None, None

    def _restore(self, path: Path, state: dict[str, Any]) -> None:
        if state["batch_size"] != self.config.batch_size:
            raise TrainingError(
                f"{path}: saved with batch_size {state['batch_size']}, resumed with {self.config.batch_size}; "
                "the data order would change"
            )
        try:
            unwrap(self.model).load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise TrainingStateError(f"{path}: saved by a different model or optimizer: {err}") from err
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        rng = state["rng"]
        if len(rng) == self.setup.world_size:
            set_rng_state(rng[self.setup.rank])
        else:  # a different number of processes: data stays exact, model randomness is reseeded
            seed_everything(self.config.seed + self.setup.rank + self.step)

    def _save(self) -> None:
        rng = [rng_state()]
        if self.setup.enabled:
            gathered: list[Any] = [None] * self.setup.world_size
            dist.all_gather_object(gathered, rng[0])
            rng = gathered
        if self.setup.is_main:
            state = {
                "format": STATE_FORMAT,
                "version": STATE_VERSION,
                "step": self.step,
                "model": unwrap(self.model).state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": rng,
                "batch_size": self.config.batch_size,
                "world_size": self.setup.world_size,
                "config": config_io.to_dict(self.full_config) if self.full_config is not None else None,
            }
            save_atomically(state, self.checkpoint_dir / f"step_{self.step:08d}.pt")
            for old in checkpoint_paths(self.checkpoint_dir)[: -self.config.keep_checkpoints]:
                old.unlink(missing_ok=True)
        barrier(self.setup)

    # -- steps ----------------------------------------------------------------------------------

    def train_step(self, batch: Any) -> dict[str, float]:
        config = self.config
        self.model.train()
        with autocast(self.device, config.precision):
            losses = self.model(move_to(batch, self.device))
        loss = losses["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"step {self.step}: the loss is {loss.item()}; lower lr or use fp32/bf16")
        self.scaler.scale(loss).backward()
        if config.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        return {key: float(value.detach()) for key, value in losses.items()}

    def validate(self) -> dict[str, float]:
        """Run the task's validation on rank 0 and log it; other ranks wait."""
        metrics: dict[str, float] = {}
        if self.setup.is_main:
            model = unwrap(self.model)
            model.eval()
            with torch.no_grad():
                metrics = self.task.validate(model)
            self.log.write({"step": self.step, "split": "val", **metrics})
        barrier(self.setup)
        return metrics

    def _loader(self, dataset: Dataset, stop: int) -> DataLoader:
        sampler = StepBatchSampler(len(dataset), self.config.batch_size, self.step, stop, self.config.seed, self.setup)
        return DataLoader(
            SkipUnreadable(dataset),
            batch_sampler=sampler,
            collate_fn=CollateWithSkips(self.task.collate),
            num_workers=self.config.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )

    def evaluate(self, export_to: Path | None = None) -> dict[str, float]:
        """Validate the task's model as built (``--eval-only``), without training; optionally export it."""
        self._build()
        metrics = self.validate()
        if export_to is not None and self.setup.is_main:
            self.task.export(self.model, Path(export_to))
        return metrics

    # -- the run --------------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Train to ``steps`` (or ``stop_at_step``), then validate and export; returns a summary."""
        config = self.config
        dataset = self.task.build_dataset()  # bad data is refused before the model is built
        if len(dataset) < config.batch_size:
            raise TrainingError(f"the dataset has {len(dataset)} items, fewer than one batch of {config.batch_size}")
        resume_from, state = self._resume_state()
        self._build()
        if resume_from is not None:
            self._restore(resume_from, state)
            del state
        if self.setup.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            if self.full_config is not None:
                config_io.dump(self.full_config, self.output_dir / "config.yaml")
        if self.setup.enabled:
            if self.device.type == "cuda" and config.sync_batchnorm:  # frozen BatchNorm is unaffected
                self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            self.model = nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                broadcast_buffers=config.broadcast_buffers,
            )
        stop = min(config.steps, config.stop_at_step or config.steps)
        summary: dict[str, Any] = {"resumed_from": str(resume_from) if resume_from else None, "start_step": self.step}
        if config.validate_at_start and self.step == 0:
            summary["initial_validation"] = self.validate()
        progress = self._progress(stop)
        window: dict[str, list[float]] = {}
        started, window_start, items = time.perf_counter(), time.perf_counter(), 0
        skipped_images = 0
        for batch, skipped in self._loader(dataset, stop):
            for message in skipped:
                log.warning("step %d: skipping an unreadable item: %s", self.step, message)
            skipped_images += len(skipped)
            values = self.train_step(batch)
            items += config.batch_size
            for key, value in values.items():
                window.setdefault(key, []).append(value)
            progress.update(1)
            if self.step % config.log_every == 0 or self.step == stop:
                means = _mean_across_ranks({k: sum(v) / len(v) for k, v in window.items()}, self.setup, self.device)
                elapsed = time.perf_counter() - window_start
                record = {"step": self.step, "split": "train", "lr": self.scheduler.get_last_lr()[0], **means}
                record["items_per_s"] = items / elapsed if elapsed > 0 else None
                if skipped_images:
                    record["skipped_items"] = skipped_images
                self.log.write(record)
                progress.set_postfix(loss=f"{means['loss']:.4f}")
                window, window_start, items = {}, time.perf_counter(), 0
            if self.step % config.checkpoint_every == 0 and self.step < stop:
                self._save()
            if config.validate_every and self.step % config.validate_every == 0 and self.step < config.steps:
                self.validate()
        progress.close()
        if self.step > summary["start_step"] or resume_from is None:
            self._save()
        summary.update(step=self.step, seconds=time.perf_counter() - started, skipped_items=skipped_images)
        if self.step >= config.steps:
            summary["validation"] = self.validate()
            if self.setup.is_main:
                self.task.export(unwrap(self.model), self.output_dir / "export")
            barrier(self.setup)
        return summary

    def _progress(self, stop: int) -> Any:
        from tqdm import tqdm

        return tqdm(
            total=stop,
            initial=self.step,
            disable=not (self.config.progress and self.setup.is_main),
            desc="train",
            dynamic_ncols=True,
        )

    def close(self) -> None:
        self._numerics.close()
        if self.setup.enabled and dist.is_initialized():
            dist.destroy_process_group()
