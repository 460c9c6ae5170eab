"""Device and precision choices, shared by train, sample and fid."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

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


def default_compile(device: torch.device) -> bool:
    """torch.compile pays off on a GPU; on a 2-core CPU its minute of compiling does not (docs/train.md)."""
    return device.type == "cuda"


@dataclass(frozen=True)
class Runtime:
    """Where and how a network runs: the resolved --device, --precision and --compile."""

    device: torch.device
    precision: str
    compile: bool

    def autocast(self):
        return autocast(self.device, self.precision)

    def describe(self) -> str:
        """e.g. 'cpu fp32' or 'cuda bf16 compiled', for log lines."""
        return f"{self.device.type} {self.precision}{' compiled' if self.compile else ''}"


def resolve(device: str = "auto", precision: str = "auto", compile: bool | None = None) -> Runtime:
    """The one place where `auto` and an unset --compile become concrete choices."""
    dev = resolve_device(device)
    compiled = default_compile(dev) if compile is None else compile
    return Runtime(dev, resolve_precision(precision, dev), compiled)
