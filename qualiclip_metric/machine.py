"""What this machine's CPU offers: its model name and the instruction-set extensions that decide speed.

Inference choices (:func:`qualiclip_metric.runtimes.fastest_configuration`) and every benchmark result
read these, so that a choice is made by what the machine has, and a figure says where it came from.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

#: The extensions that decide fp32, bf16 and fp16 convolution speed on x86 CPUs.
SPEED_FLAGS = frozenset(
    {"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_fp16"}
)


def _cpuinfo_field(name: str) -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() == name:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


@functools.cache
def cpu_flags() -> frozenset[str]:
    """Every flag ``/proc/cpuinfo`` lists (empty where there is none, as on macOS and Windows)."""
    return frozenset((_cpuinfo_field("flags") or "").split())


def cpu_features() -> list[str]:
    """The CPU's speed-relevant extensions (:data:`SPEED_FLAGS`) that this machine has, sorted."""
    return sorted(SPEED_FLAGS & cpu_flags())


def has_amx_bf16() -> bool:
    """Intel AMX with bf16 tiles (Sapphire Rapids and later): bf16 convolutions run several times faster."""
    return {"amx_tile", "amx_bf16"} <= cpu_flags()


def cpu_model() -> str:
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()
