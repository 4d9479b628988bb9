"""Numeric precisions: their names, their autocast dtypes, and TF32 on CUDA.

One place for them, so the model, the integrations and the training engine mean the same thing by
``"tf32"`` or ``"bf16"``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch

Precision = Literal["fp32", "tf32", "bf16", "fp16"]
#: Autocast dtype of each precision; "fp32" is strict IEEE fp32 and "tf32" lets CUDA use TF32 in fp32 ops.
PRECISIONS: dict[str, torch.dtype | None] = {
    "fp32": None,
    "tf32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


def validate_precision(value: object) -> Precision:
    """Return ``value`` if it names a precision, else say which names exist.

    Raises:
        ValueError: ``value`` is not one of :data:`PRECISIONS`.
    """
    if not isinstance(value, str) or value not in PRECISIONS:
        raise ValueError(f"Argument `precision` must be one of {sorted(PRECISIONS)}, but got {value!r}")
    return value  # type: ignore[return-value]


@contextlib.contextmanager
def cuda_tf32(enabled: bool) -> Iterator[None]:
    """Allow or forbid TF32 in cuDNN convolutions and CUDA matmuls, restoring the caller's settings.

    cuDNN uses TF32 for fp32 convolutions by default, which moves scores by about 3e-4.
    """
    backends = torch.backends
    if hasattr(backends.cudnn, "conv") and hasattr(backends.cuda.matmul, "fp32_precision"):
        targets = [backends.cudnn.conv, backends.cuda.matmul]
        saved = [target.fp32_precision for target in targets]
        for target in targets:
            target.fp32_precision = "tf32" if enabled else "ieee"
        try:
            yield
        finally:
            for target, value in zip(targets, saved, strict=True):
                target.fp32_precision = value
    else:  # torch releases without the per-backend precision API
        saved_flags = (backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32)
        backends.cudnn.allow_tf32 = backends.cuda.matmul.allow_tf32 = enabled
        try:
            yield
        finally:
            backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32 = saved_flags


def compute_context(precision: Precision, device_type: str, autocast: bool = True) -> contextlib.ExitStack:
    """The numeric mode of ``precision`` on ``device_type``.

    TF32 is allowed on CUDA for "tf32" only; "bf16" and "fp16" enter autocast unless ``autocast`` is
    False (a trunk whose weights are already in that dtype). With "fp32", a caller's own autocast stays
    in force.
    """
    stack = contextlib.ExitStack()
    if device_type == "cuda":
        stack.enter_context(cuda_tf32(precision == "tf32"))
    dtype = PRECISIONS[precision]
    if dtype is not None and autocast:
        stack.enter_context(torch.autocast(device_type=device_type, dtype=dtype))
    return stack
