"""What this machine computes fast: bf16 on GPUs that have it and on CPUs with bf16 units.

A CPU with AVX-512 BF16 or AMX multiplies bf16 matrices 2-3× faster than fp32 (measured
on the development machines: 260-390 vs 125-160 GFLOP/s), so inference and training
default to bf16 there and to fp32 on CPUs without them, where bf16 is emulated and slow.

``VALIGN_CPU_BF16=0`` (or ``1``) overrides the detection, e.g. to compare both on one
machine or to pin fp32 for bit-exact comparisons.
"""

from __future__ import annotations

import functools
import os
import platform
from typing import Literal

Dtype = Literal["float32", "bfloat16"]

# /proc/cpuinfo flags of the x86 units that run bf16 matmuls natively.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux only; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_bf16() -> bool:
    """True when this CPU multiplies bf16 natively (or ``VALIGN_CPU_BF16`` says so).

    Example:
        >>> isinstance(cpu_has_bf16(), bool)
        True
    """
    forced = os.environ.get("VALIGN_CPU_BF16", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return platform.machine().lower() in ("x86_64", "amd64") and any(f in cpu_flags() for f in BF16_CPU_FLAGS)


def gpu_has_bf16() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def fast_dtype(device: str = "cpu") -> Dtype:
    """The dtype that computes fastest on ``device`` (``cpu`` or ``cuda``) without fp16's range problems.

    Example:
        >>> fast_dtype("cpu") in ("float32", "bfloat16")
        True
    """
    if device.startswith("cuda"):
        return "bfloat16" if gpu_has_bf16() else "float32"
    return "bfloat16" if cpu_has_bf16() else "float32"
