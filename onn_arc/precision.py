"""Compute precision: fp32, or bf16 autocast where the hardware runs it fast (DESIGN §10).

`auto` picks bf16 on a CUDA device that supports it and on a CPU whose flags show `avx512_bf16` or `amx_bf16`
(measured on such a CPU: a Tiny-ONN training step 2.3x faster than fp32); elsewhere fp32, since bf16 without those
instructions is emulated and far slower. Decided at run time, never assumed.

Under bf16 only the model's forward runs in autocast: parameters, gradients, optimizer state, Gauss-Newton curvature
statistics and eigenbases stay fp32, and callers take `.float()` logits so losses and their reductions are fp32.
"""

import contextlib
import functools
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Literal

import torch

Precision = Literal["auto", "fp32", "bf16"]
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """Whether /proc/cpuinfo lists a native bf16 instruction set (False where there is no /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = {word for line in text.splitlines() if line.startswith("flags") for word in line.split()}
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def resolve(precision: Precision, device: torch.device | str) -> Literal["fp32", "bf16"]:
    """The precision `precision` means on `device`: `auto` becomes bf16 where it is fast (module docstring)."""
    if precision != "auto":
        return precision
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_fast_bf16() else "fp32"


def autocast(precision: Precision, device: torch.device | str) -> AbstractContextManager:
    """A context that runs the model's forward in `precision` on `device` (a no-op for fp32)."""
    device = torch.device(device)
    if resolve(precision, device) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)
