"""pyiqa integration: ``pyiqa.create_metric("qualiclip")`` served by this package's QualiCLIP.

Registered names:

- ``qualiclip``: this package's network with pyiqa's numbers (temperature 2, scale exp(logit_scale));
- ``qualiclip-official``: the official scorer (temperature 1, fixed scale 100);
- ``qualiclip-pyiqa``: pyiqa's own built-in implementation, kept reachable under a new name.

Registration happens when ``qualiclip_metric`` is imported (at once if pyiqa is already imported,
otherwise right after pyiqa is), and through pyiqa's ``pyiqa.archs`` entry-point group. It is
idempotent.
"""

from __future__ import annotations

import copy
import importlib.abc
import importlib.util
import sys
import warnings
from collections.abc import Sequence
from typing import Any, Literal

from torch import Tensor, nn

from qualiclip_metric.config import PromptPair
from qualiclip_metric.inputs import resize_longer_side
from qualiclip_metric.model import Precision, QualiCLIP

ARCH_NAME = "QualiCLIPMetricArch"
PYIQA_BUILTIN_NAME = "qualiclip-pyiqa"


class QualiCLIPMetricArch(nn.Module):
    """pyiqa network wrapping :class:`QualiCLIP`; returns (N, 1) scores like pyiqa's archs.

    ``logit_scale="checkpoint"`` multiplies similarities by exp(logit_scale) of the checkpoint, as
    pyiqa does; ``"fixed"`` uses the official 100. ``pretrained_model_path`` (pyiqa's name) and
    ``weights`` both take any source of :meth:`QualiCLIP.from_pretrained`.
    """

    def __init__(
        self,
        temperature: float = 2.0,
        logit_scale: Literal["checkpoint", "fixed"] = "checkpoint",
        pretrained_model_path: str | None = None,
        weights: str | None = None,
        revision: str | None = None,
        local_files_only: bool = False,
        precision: Precision = "fp32",
        prompts: Sequence[PromptPair] | None = None,
        max_size: int | None = None,
        fast: bool = False,
    ) -> None:
        super().__init__()
        if logit_scale not in ("checkpoint", "fixed"):
            raise ValueError(f"logit_scale must be 'checkpoint' or 'fixed', got {logit_scale!r}")
        if pretrained_model_path is not None and weights is not None:
            raise ValueError("give either pretrained_model_path or weights, not both")
        self.model = QualiCLIP.from_pretrained(
            pretrained_model_path if pretrained_model_path is not None else weights,
            revision=revision,
            local_files_only=local_files_only,
            temperature=temperature,
            precision=precision,
            prompts=prompts,
            fast=fast,
        )
        if logit_scale == "checkpoint":
            self.model.score_logit_scale = float(self.model.logit_scale.exp())
        self.max_size = max_size

    def train(self, mode: bool = True) -> QualiCLIPMetricArch:
        super().train(mode)
        self.model.eval()  # BatchNorm statistics are part of the metric: never update them
        return self

    def forward(self, images: Tensor) -> Tensor:
        # pyiqa's InferenceModel checks the range itself (check_input_range), and skips it for losses.
        return self.model(resize_longer_side(images, self.max_size), check_range=False).unsqueeze(1)


def _metric_config(temperature: float, logit_scale: str) -> dict[str, Any]:
    return {
        "metric_opts": {"type": ARCH_NAME, "temperature": temperature, "logit_scale": logit_scale},
        "metric_mode": "NR",
        "score_range": "0, 1",
        "lower_better": False,
    }


def register() -> None:
    """Register the arch and the metric names with pyiqa (safe to call any number of times)."""
    from pyiqa.default_model_configs import DEFAULT_CONFIGS
    from pyiqa.utils.registry import ARCH_REGISTRY

    ARCH_REGISTRY.register(QualiCLIPMetricArch, name=ARCH_NAME, override=True)
    builtin = DEFAULT_CONFIGS.get("qualiclip")
    if builtin is not None and builtin.get("metric_opts", {}).get("type") != ARCH_NAME:
        DEFAULT_CONFIGS.setdefault(PYIQA_BUILTIN_NAME, copy.deepcopy(builtin))
    DEFAULT_CONFIGS["qualiclip"] = _metric_config(2.0, "checkpoint")
    DEFAULT_CONFIGS["qualiclip-official"] = _metric_config(1.0, "fixed")


def _register_or_warn() -> None:
    try:
        register()
    except Exception as err:  # a pyiqa we do not understand must not break importing it
        warnings.warn(
            f"qualiclip-metric could not register its metrics with pyiqa: {err}", RuntimeWarning, stacklevel=2
        )


class _RegisterAfterPyiqaImport(importlib.abc.MetaPathFinder):
    """Runs :func:`register` as soon as ``import pyiqa`` has finished, without importing pyiqa early."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != "pyiqa":
            return None
        sys.meta_path.remove(self)  # one shot, and lets the real finders answer below
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        execute = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            execute(module)
            _register_or_warn()

        spec.loader.exec_module = exec_module  # this spec's own loader instance only
        return spec


def install() -> None:
    """Register with pyiqa now if it is imported, otherwise as soon as it is."""
    if "pyiqa" in sys.modules:
        _register_or_warn()
    elif not any(isinstance(finder, _RegisterAfterPyiqaImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterPyiqaImport())
