"""Inference backends besides torch: OpenVINO and onnxruntime, each running an export of the whole score.

Why they exist: PyTorch's CPU convolutions are direct ones; OpenVINO's fp32 3x3 convolutions use
Winograd's algorithm (fewer multiplications for the same result to about 1e-6) and its bf16 kernels
use AMX tiles where the CPU has them. Neither computes gradients: the torch backend stays the
reference and the only differentiable one.

A backend converts the model once per weights and runtime version into an fp32 export folder
(:mod:`qualiclip_metric.export`) in the package's cache, so that later processes only compile it;
:func:`fastest_configuration` chooses by what this machine's CPU offers.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from qualiclip_metric.errors import CheckpointError
from qualiclip_metric.export import (
    LAYOUT_VERSION,
    MODEL_FILES,
    OPENVINO_PRECISION,
    export_scorer,
    read_description,
    weights_sha256,
)
from qualiclip_metric.inputs import validate_threads
from qualiclip_metric.integrity import Verify
from qualiclip_metric.machine import has_amx_bf16
from qualiclip_metric.precision import PRECISIONS

if TYPE_CHECKING:
    from qualiclip_metric.model import QualiCLIP

Backend = Literal["torch", "openvino", "onnxruntime"]
BACKENDS: tuple[str, ...] = ("torch", "openvino", "onnxruntime")
#: The export format each non-torch backend runs, and the distributions it needs (with their extra).
FORMAT = {"openvino": "openvino", "onnxruntime": "onnx"}
REQUIREMENTS = {"openvino": (("openvino",), "openvino"), "onnxruntime": (("onnxruntime", "onnx", "onnxscript"), "onnx")}
_log = logging.getLogger(__name__)


def validate_backend(backend: object) -> str:
    """``backend`` if it is known and its runtime is installed.

    Raises:
        ValueError: an unknown backend, or one whose packages are missing (the message says what to install).
    """
    if backend not in BACKENDS:
        raise ValueError(f"Argument `backend` must be one of {BACKENDS}, but got {backend!r}")
    if backend != "torch":
        modules, extra = REQUIREMENTS[backend]  # type: ignore[index]
        missing = [name for name in modules if importlib.util.find_spec(name) is None]
        if missing:
            raise ValueError(f'backend {backend!r} needs {", ".join(missing)}: pip install "qualiclip-metric[{extra}]"')
    return backend  # type: ignore[return-value]


def is_installed(backend: str) -> bool:
    try:
        validate_backend(backend)
    except ValueError:
        return False
    return True


@functools.cache
def openvino_capabilities() -> frozenset[str]:
    """What OpenVINO's CPU plugin can do here ("FP32", "BF16", "FP16", "WINOGRAD", ...)."""
    import openvino as ov

    return frozenset(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def backend_precisions(backend: str) -> tuple[str, ...]:
    """The precisions ``backend`` runs on this machine's CPU."""
    if backend == "torch":
        return tuple(PRECISIONS)
    if backend == "onnxruntime":
        return ("fp32",)  # the CPU execution provider has no bf16 convolutions and few fp16 kernels
    capabilities = openvino_capabilities()
    return ("fp32",) + tuple(p for p, flag in (("bf16", "BF16"), ("fp16", "FP16")) if flag in capabilities)


def check_backend(backend: str, precision: str, device: torch.device | str | None = None) -> None:
    """Refuse a backend that is not installed, a precision it cannot run here, or a non-CPU device.

    Raises:
        ValueError: with what to use instead.
    """
    validate_backend(backend)
    if backend == "torch":
        return
    if device is not None and torch.device(device).type != "cpu":
        raise ValueError(f"backend {backend!r} runs on the CPU, not on {device}; use backend='torch' there")
    if precision not in backend_precisions(backend):
        if precision == "tf32":
            why = "TF32 is a CUDA setting; use fp32"
        elif backend == "onnxruntime":
            why = "onnxruntime's CPU kernels run fp32 only; use backend='openvino' for bf16"
        else:
            why = f"this CPU has no native {precision} for OpenVINO (bf16 needs AVX512_BF16 or AMX, fp16 AMX-FP16)"
        raise ValueError(f"backend {backend!r} cannot run precision {precision!r} here: {why}")


def runtime_versions(backend: str) -> dict[str, str]:
    """Versions of everything that shapes a conversion for ``backend``: part of its cache key.

    Read from the modules themselves: onnxruntime's distribution may be onnxruntime-gpu or another.
    """
    from qualiclip_metric import __version__

    modules, _ = REQUIREMENTS[backend]
    return {
        "torch": torch.__version__,
        "qualiclip-metric": __version__,
        **{name: importlib.import_module(name).__version__ for name in modules},
    }


class ExportedScorer:
    """Runs an export folder with its runtime on the CPU; calls return every output as CPU tensors.

    Args:
        directory: an export folder (as :func:`qualiclip_metric.export.export_scorer` writes it).
        threads: intra-op threads (default ``torch.get_num_threads()``).
        precision: OpenVINO's inference precision (default the export's own).
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        threads: int | None = None,
        precision: str | None = None,
        verify: Verify = True,
    ) -> None:
        threads = validate_threads(threads)  # before reading anything
        threads = torch.get_num_threads() if threads is None else threads
        self.directory = Path(directory)
        self.description = read_description(self.directory, verify=verify)
        self.output_names = [output["name"] for output in self.description["outputs"]]
        model_file = str(self.directory / MODEL_FILES[self.description["format"]][0])
        if self.description["format"] == "openvino":
            import openvino as ov

            config = {
                "INFERENCE_PRECISION_HINT": OPENVINO_PRECISION[precision or self.description["precision"]],
                "INFERENCE_NUM_THREADS": threads,
                "PERFORMANCE_HINT": "LATENCY",
            }
            self._compiled = ov.Core().compile_model(model_file, "CPU", config)
        else:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            self._session = ort.InferenceSession(model_file, options, providers=["CPUExecutionProvider"])

    @property
    def threads(self) -> int:
        """The intra-op threads, as the runtime reports them."""
        if self.description["format"] == "openvino":
            return int(self._compiled.get_property("INFERENCE_NUM_THREADS"))
        return self._session.get_session_options().intra_op_num_threads

    @property
    def precision(self) -> str:
        """The precision the runtime computes in, as it reports it."""
        if self.description["format"] == "openvino":
            hint = self._compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
            return {name: ours for ours, name in OPENVINO_PRECISION.items()}.get(hint, hint)
        return "fp32"

    def __call__(self, images: Tensor) -> dict[str, Tensor]:
        array = images.detach().to("cpu", torch.float32).contiguous().numpy()
        if self.description["format"] == "openvino":
            values = self._compiled(array, share_inputs=True).to_tuple()
        else:
            values = self._session.run(self.output_names, {"images": array})
        return {name: torch.from_numpy(value) for name, value in zip(self.output_names, values, strict=True)}


def cached_export(model: QualiCLIP, backend: str, precision: str = "fp32") -> Path:
    """The export folder of ``model`` for ``backend`` in the package's cache, converted if not there yet.

    The key covers the weights' tensors, prompts, temperature, score scale, precision and the versions
    of torch, this package and the runtime, so a folder is never reused for anything else.
    """
    format = FORMAT[backend]
    key_fields = {
        "layout": LAYOUT_VERSION,
        "format": format,
        "precision": precision,
        "weights": weights_sha256(model),
        "prompt_pairs": model.prompt_pairs,
        "scale": model.score_logit_scale / model.temperature,
        "mean": model.config.mean,
        "std": model.config.std,
        "versions": runtime_versions(backend),
    }
    key = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()[:24]
    from qualiclip_metric.integrity import package_cache_dir

    folder = package_cache_dir("runtimes", format) / f"{precision}-{key}"
    if folder.exists():
        try:
            read_description(folder)
            return folder
        except CheckpointError as err:  # a damaged entry of this cache: convert it again
            _log.warning("converting again: %s", err)
            shutil.rmtree(folder, ignore_errors=True)
    try:
        export_scorer(model, folder, format, precision=precision, outputs=3)
    except FileExistsError:  # another process converted the same model meanwhile
        read_description(folder)
    return folder


def load_runtime(model: QualiCLIP, backend: str, precision: str, threads: int | None = None) -> ExportedScorer:
    """A compiled scorer of ``model`` for ``backend``, from the conversion cache."""
    check_backend(backend, precision)
    # One fp32 conversion serves every precision: OpenVINO's is a compile-time hint (onnxruntime runs fp32).
    folder = cached_export(model, backend)  # verified (or written) just now
    return ExportedScorer(folder, threads=threads, precision=precision, verify=False)


@dataclass(frozen=True)
class Configuration:
    """An inference configuration and why it was chosen; ``options()`` goes to ``from_pretrained``."""

    backend: str
    precision: str
    fast: bool
    reason: str

    def options(self) -> dict[str, Any]:
        return {"backend": self.backend, "precision": self.precision, "fast": self.fast}

    def __str__(self) -> str:
        return f"backend {self.backend}, precision {self.precision}" + (", fused trunk" if self.fast else "")


def fastest_configuration(
    device: str | torch.device = "cpu", *, backend: str | None = None, precision: str | None = None
) -> Configuration:
    """The fastest configuration on ``device`` whose scores stay within 3e-3 of fp32 (SRCC >= 0.999).

    On the CPU: OpenVINO in bf16 where AMX has bf16 tiles (several times fp32 speed), OpenVINO in
    fp32 (Winograd convolutions, exact to 1e-5) without AMX, and the fused torch trunk where OpenVINO
    is not installed. On GPUs: the fused torch trunk in bf16 where it is supported. A ``backend`` or
    ``precision`` given is kept and the rest chosen around it.

    Raises:
        ValueError: a backend or precision that cannot run here.
    """
    device = torch.device(device)
    if device.type != "cpu":
        if backend not in (None, "torch"):
            raise ValueError(f"backend {backend!r} runs on the CPU, not on {device}")
        if precision is None and device.type == "cuda" and torch.cuda.is_bf16_supported():
            return Configuration("torch", "bf16", True, f"{device}: bf16 tensor cores; scores within 2e-3 of fp32")
        chosen = precision or "fp32"
        return Configuration("torch", chosen, True, f"{device}: the fused torch trunk in {chosen}")
    amx = has_amx_bf16()
    if backend is None:
        usable = is_installed("openvino") and (precision is None or precision in backend_precisions("openvino"))
        backend = "openvino" if usable else "torch"
    validate_backend(backend)
    if precision is None:
        precision = "bf16" if amx and "bf16" in backend_precisions(backend) else "fp32"
    check_backend(backend, precision)
    if backend == "openvino":
        reason = (
            "AMX bf16 tiles: OpenVINO's bf16 convolutions run several times its fp32 ones"
            if precision == "bf16" and amx
            else "OpenVINO's Winograd fp32 3x3 convolutions do fewer multiplications than direct ones"
            if precision == "fp32"
            else f"OpenVINO in {precision}, as asked"
        )
        if precision == "fp32" and not amx:
            reason += "; without AMX, bf16 would cost accuracy for a smaller gain"
    elif backend == "onnxruntime":
        reason = "onnxruntime in fp32, as asked"
    else:
        reason = "the fused torch trunk (BatchNorm folded, channels-last)" + (
            "; AMX bf16 tiles" if precision == "bf16" and amx else ""
        )
        if not is_installed("openvino"):
            reason += '; pip install "qualiclip-metric[openvino]" for OpenVINO\'s faster kernels'
    return Configuration(backend, precision, backend == "torch", reason)
