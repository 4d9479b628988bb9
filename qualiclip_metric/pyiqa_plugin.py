"""pyiqa integration: ``pyiqa.create_metric("qualiclip")`` served by this package's QualiCLIP.

Registered names:

- ``qualiclip``: this package's network with pyiqa's numbers (temperature 2, scale exp(logit_scale));
- ``qualiclip-official``: the official scorer (temperature 1, fixed scale 100);
- ``qualiclip+`` (KonIQ), ``qualiclip+-clive``, ``qualiclip+-flive``, ``qualiclip+-spaq``: QualiCLIP+ from
  the registry, its learned prompts encoded once, so a forward costs what QualiCLIP's does;
- ``qualiclip-pyiqa``, ``qualiclip+-pyiqa``, ``qualiclip+-clive-pyiqa``...: pyiqa's own built-in classes,
  kept reachable under new names.

``pretrained_model_path=`` takes what pyiqa's takes: for the QualiCLIP+ names a prompt-learner file
in pyiqa's layout (encoded with the registry's QualiCLIP text tower), or any full checkpoint.

pyiqa reads its ``pyiqa.archs`` entry points only when it first looks up an arch, after
``create_metric`` has checked its own table of names. So in a fresh process that never imported
``qualiclip_metric``, the first ``create_metric("qualiclip")`` looks up pyiqa's arch name
``QualiCLIP``: registration serves that name with :func:`qualiclip_arch`, which builds this package's
network for plain QualiCLIP and pyiqa's own class for everything else (QualiCLIP+, other backbones).
The other names exist once registration has run: after ``import qualiclip_metric``, or after pyiqa's
first arch lookup. Registration also runs when ``qualiclip_metric`` is imported (at once if pyiqa is
already imported, otherwise right after pyiqa is). It is idempotent.
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
from qualiclip_metric.inputs import resize_longer_side, validate_max_size
from qualiclip_metric.model import QualiCLIP
from qualiclip_metric.precision import Precision
from qualiclip_metric.runtimes import Backend

ARCH_NAME = "QualiCLIPMetricArch"
#: pyiqa's own QualiCLIP, under a name of its own (its QualiCLIP+ classes follow as ``<name>-pyiqa``).
PYIQA_BUILTIN_NAME = "qualiclip-pyiqa"
#: pyiqa's arch name for QualiCLIP, served by :func:`qualiclip_arch`, and the name its own class keeps.
PYIQA_ARCH_NAME = "QualiCLIP"
PYIQA_BUILTIN_ARCH = "QualiCLIPPyiqa"
#: Options only pyiqa's own class understands: with any of them, ``qualiclip_arch`` builds that class.
PYIQA_ONLY_OPTIONS = frozenset({"backbone", "n_ctx", "ctx_init", "prompt_specific_ctx", "pos_embedding"})
#: pyiqa's QualiCLIP metric names, each served from the registry entry of the same name.
FAMILY = ("qualiclip+", "qualiclip+-clive", "qualiclip+-flive", "qualiclip+-spaq")


class QualiCLIPMetricArch(nn.Module):
    """pyiqa network wrapping :class:`QualiCLIP`; returns (N, 1) scores like pyiqa's archs.

    ``logit_scale="checkpoint"`` multiplies similarities by exp(logit_scale) of the checkpoint, as
    pyiqa does; ``"fixed"`` uses the official 100. ``weights`` takes any source of
    :meth:`QualiCLIP.from_pretrained`, a registry name included; ``pretrained_model_path`` (pyiqa's
    name) replaces it with a full checkpoint, or adds a QualiCLIP+ prompt learner to it. ``backend``
    and ``threads`` choose who computes the score (``create_metric("qualiclip", backend="openvino")``);
    only the torch backend serves pyiqa's losses (``as_loss=True``).
    """

    def __init__(
        self,
        temperature: float = 2.0,
        logit_scale: Literal["checkpoint", "fixed"] = "checkpoint",
        pretrained_model_path: str | None = None,
        weights: str | None = None,
        prompt_learner: str | None = None,
        revision: str | None = None,
        local_files_only: bool = False,
        precision: Precision = "fp32",
        prompts: Sequence[PromptPair] | None = None,
        max_size: int | None = None,
        fast: bool = False,
        backend: Backend = "torch",
        threads: int | None = None,
        pretrained: bool = True,
    ) -> None:
        super().__init__()
        from qualiclip_metric.prompt_learner import is_prompt_learner

        self.max_size = validate_max_size(max_size)
        if logit_scale not in ("checkpoint", "fixed"):
            raise ValueError(f"logit_scale must be 'checkpoint' or 'fixed', got {logit_scale!r}")
        if not pretrained:
            raise ValueError("pretrained=False has no weights to score with; use the '*-pyiqa' metric names for it")
        if pretrained_model_path is not None:
            if is_prompt_learner(pretrained_model_path):
                if prompt_learner is not None:
                    raise ValueError("give the prompt learner as pretrained_model_path or prompt_learner, not both")
                prompt_learner = pretrained_model_path
            else:
                weights = pretrained_model_path
        self.model = QualiCLIP.from_pretrained(
            weights,
            prompt_learner=prompt_learner,
            revision=revision,
            local_files_only=local_files_only,
            temperature=temperature,
            precision=precision,
            prompts=prompts,
            fast=fast,
            backend=backend,
            threads=threads,
        )
        if logit_scale == "checkpoint":
            self.model.set_score_logit_scale(float(self.model.logit_scale.exp()))

    def train(self, mode: bool = True) -> QualiCLIPMetricArch:
        super().train(mode)
        self.model.eval()  # BatchNorm statistics are part of the metric: never update them
        return self

    def forward(self, images: Tensor) -> Tensor:
        # pyiqa's InferenceModel checks the range itself (check_input_range), and skips it for losses.
        return self.model(resize_longer_side(images, self.max_size), check_range=False).unsqueeze(1)


def qualiclip_arch(model_type: str = "qualiclip", **options: Any) -> nn.Module:
    """What pyiqa's ``QualiCLIP`` arch name builds: this package's network for QualiCLIP and the
    QualiCLIP+ family with pretrained weights, pyiqa's own class for untrained prompt learners and
    options only it has."""
    ours = model_type == "qualiclip" or (model_type in FAMILY and options.get("pretrained", True))
    if ours and not PYIQA_ONLY_OPTIONS & set(options):
        return QualiCLIPMetricArch(**{"weights": model_type, **options})
    from pyiqa.archs.qualiclip_arch import QualiCLIP as PyiqaQualiCLIP

    return PyiqaQualiCLIP(model_type=model_type, **options)


def _metric_config(temperature: float, logit_scale: str, weights: str = "qualiclip") -> dict[str, Any]:
    return {
        "metric_opts": {"type": ARCH_NAME, "weights": weights, "temperature": temperature, "logit_scale": logit_scale},
        "metric_mode": "NR",
        "score_range": "0, 1",
        "lower_better": False,
    }


def register() -> None:
    """Register the arch and the metric names with pyiqa (safe to call any number of times)."""
    # pyiqa's module registers its class as "QualiCLIP" when imported: import it first, then take the name.
    from pyiqa.archs.qualiclip_arch import QualiCLIP as PyiqaQualiCLIP
    from pyiqa.default_model_configs import DEFAULT_CONFIGS
    from pyiqa.utils.registry import ARCH_REGISTRY

    ARCH_REGISTRY.register(QualiCLIPMetricArch, name=ARCH_NAME, override=True)
    ARCH_REGISTRY.register(PyiqaQualiCLIP, name=PYIQA_BUILTIN_ARCH, override=True)
    ARCH_REGISTRY.register(qualiclip_arch, name=PYIQA_ARCH_NAME, override=True)
    for name in ("qualiclip", *FAMILY):
        builtin = DEFAULT_CONFIGS.get(name, {})
        own_name = f"{name}-pyiqa"
        if own_name not in DEFAULT_CONFIGS and builtin.get("metric_opts", {}).get("type") == PYIQA_ARCH_NAME:
            pyiqa_config = copy.deepcopy(builtin)  # pyiqa's own numbers and class, under a name of their own
            pyiqa_config["metric_opts"]["type"] = PYIQA_BUILTIN_ARCH
            DEFAULT_CONFIGS[own_name] = pyiqa_config
        DEFAULT_CONFIGS[name] = _metric_config(2.0, "checkpoint", weights=name)
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
