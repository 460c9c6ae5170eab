"""Guidance: a denoiser pushed away from a weaker one, D_w = D + w (D − D_weak), at every network call
of any sampler (applied in dtools.samplers.chain.Denoiser, to x0_hat and eps_hat alike, before
clipping).

- Classifier-free guidance (Ho & Salimans 2022): D is the class-conditional prediction, D_weak the
  same network's unconditional one (the null class that label dropout trained).
- Autoguidance (Karras et al. 2024): D_weak is a weaker model of the same data and schedule (smaller,
  or trained for less time), for conditional and unconditional models alike.

w = 0 is no guidance: the weak network is never called, and the result is the unguided sample to the
bit. Ho & Salimans write the same rule as (1 + w) D − w D_weak; Karras et al.'s weight is 1 + w.

A guidance interval (Kynkäänniemi et al. 2024) applies it only where the noise level
σ_t = √((1 − ᾱ_t)/ᾱ_t) lies in (lo, hi]: guidance at high noise levels costs diversity, at low ones it
does little. Elsewhere the network is called once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from dtools.errors import OptionError

ModelFn = Callable[..., torch.Tensor]  # as dtools.samplers.chain.ModelFn: (x_t, t[, cond]) -> output

# `dtools sample`'s weight for autoguidance by the run's own early snapshot (RUN/guide.safetensors), which
# it applies by default to a run folder's model, and for a --guide given without --guidance
# (docs/quality.md, "Autoguidance by default")
RUN_GUIDANCE = 1.0


@dataclass(frozen=True)
class Guidance:
    """How to guide: the weight w, the weak denoiser's network call (`weak_fn(x_t, t[, weak_cond])`,
    predicting `weak_parameterization`) and the σ interval where it applies (None: everywhere)."""

    weight: float
    weak_fn: ModelFn
    weak_parameterization: str
    weak_cond: torch.Tensor | None = None
    interval: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        check_weight(self.weight)
        if self.interval is not None:
            check_interval(self.interval)

    def applies(self, alpha_cumprod: float) -> bool:
        """Whether guidance acts at a timestep of this ᾱ_t (w = 0: never)."""
        if not self.weight:
            return False
        if self.interval is None:
            return True
        lo, hi = self.interval
        s = sigma(alpha_cumprod)
        return lo < s <= hi


def sigma(alpha_cumprod: float) -> float:
    """σ_t = √((1 − ᾱ)/ᾱ), the noise level of x_t/√ᾱ (EDM's σ); ∞ at ᾱ = 0."""
    return math.inf if alpha_cumprod <= 0.0 else math.sqrt((1.0 - alpha_cumprod) / alpha_cumprod)


def check_weight(w: float) -> float:
    if not (isinstance(w, int | float) and math.isfinite(w) and w >= 0):
        raise OptionError("--guidance", f"must be a finite number >= 0 (0 = no guidance), got {w}")
    return float(w)


def check_interval(interval: tuple[float, float]) -> tuple[float, float]:
    lo, hi = interval
    if not (lo >= 0 and hi > lo) or math.isnan(lo) or math.isnan(hi):
        raise OptionError("--guidance-interval", f"needs 0 <= LO < HI (noise levels σ), got {lo:g},{hi:g}")
    return float(lo), float(hi)


def parse_interval(text: str) -> tuple[float, float]:
    """--guidance-interval LO,HI (σ; HI may be inf) -> (lo, hi)."""
    try:
        lo, hi = (float(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        raise OptionError("--guidance-interval",
                          f"expects LO,HI noise levels σ like 0.28,5.42, got {text!r}") from None
    return check_interval((lo, hi))

