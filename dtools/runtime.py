"""Device and precision choices, shared by train, sample and fid."""

from __future__ import annotations

import contextlib

import torch

from dtools.errors import DtoolsError

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA when present, then Apple's MPS, else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DtoolsError("--device cuda was asked for, but no CUDA GPU is available; use cpu or auto")
        return torch.device(name)
    if name == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise DtoolsError("--device mps was asked for, but MPS is not available")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise DtoolsError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")


def resolve_precision(name: str, device: torch.device) -> str:
    """`auto`: bf16 on a CUDA GPU that supports it, fp16 on older GPUs, fp32 on the CPU
    (CPU bf16 autocast is slower than fp32 on most CPUs without AMX)."""
    if name not in PRECISIONS:
        raise DtoolsError(f"unknown precision {name!r}; choose one of {', '.join(PRECISIONS)}")
    if name != "auto":
        if name == "fp16" and device.type == "cpu":
            raise DtoolsError("--precision fp16 needs a GPU; on the CPU use bf16 or fp32")
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def autocast(device: torch.device, precision: str):
    """The autocast context for a resolved precision (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
