"""Exponential moving average of network weights (the seed's θ̄ ← 0.999 θ̄ + 0.001 θ, used for sampling).

Three ways to pick the decay d_n of update n (n = 0, 1, ...):
- fixed: d_n = decay (the seed's 0.999);
- `warmup`: d_n = min(decay, (1 + n) / (10 + n)): the average forgets its random start quickly and
  reaches the full decay after a few thousand updates;
- `sigma_rel` (Karras et al. 2024, EDM2, "power function EMA"): d_n = (1 - 1/t)^(γ+1) with t = n + 1,
  which averages the weights of the whole run so far with weights growing like t^γ. Its width is a
  fixed fraction of the run at every step: σ_rel, the standard deviation of the averaging profile
  relative to the run's length, so one setting suits a 5-minute and a 5-hour run alike.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn


class EMA:
    """Holds a frozen copy of a module whose floating-point tensors track the online module."""

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = False,
                 sigma_rel: float | None = None):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.sigma_rel = sigma_rel
        self.gamma = None if sigma_rel is None else power_gamma(sigma_rel)
        self.num_updates = 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next update will use."""
        if self.gamma is not None:
            t = self.num_updates + 1
            return (1.0 - 1.0 / t) ** (self.gamma + 1.0)
        if self.warmup:
            n = self.num_updates
            return min(self.decay, (1.0 + n) / (10.0 + n))
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """θ̄ ← d θ̄ + (1 - d) θ for every floating tensor of the state dict; others are copied."""
        d = self.current_decay()
        ema, online = self.module.state_dict(), model.state_dict()
        avg = [k for k, v in ema.items() if v.is_floating_point()]
        torch._foreach_lerp_([ema[k] for k in avg], [online[k].detach() for k in avg], 1.0 - d)
        for k, v in ema.items():
            if not v.is_floating_point():
                v.copy_(online[k])
        self.num_updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def header(self) -> dict[str, float]:
        """What a checkpoint records of the average that ran: its fixed decay (`ema_decay`; a warm-up is
        the training config's `ema_warmup`), or the power EMA's width and exponent (`ema_length`,
        `ema_gamma`)."""
        if self.gamma is not None:
            return {"ema_length": self.sigma_rel, "ema_gamma": self.gamma}
        return {"ema_decay": self.decay}


def power_sigma_rel(gamma: float) -> float:
    """σ_rel of a power-function EMA with exponent γ (the inverse of `power_gamma`)."""
    return float(np.sqrt((gamma + 1.0) / ((gamma + 2.0) ** 2 * (gamma + 3.0))))


# σ_rel(γ) rises from 0 at γ = -1 to its largest value at γ = (√5 - 3) / 2 ≈ -0.382, then falls: no
# power-function EMA is wider than MAX_SIGMA_REL ≈ 0.3003 of the run (and γ must stay above -1, or
# the first update's decay (1 - 1/1)^(γ+1) would be 0 to a negative power)
GAMMA_WIDEST = (np.sqrt(5.0) - 3.0) / 2.0
MAX_SIGMA_REL = power_sigma_rel(GAMMA_WIDEST)


def power_gamma(sigma_rel: float) -> float:
    """The exponent γ of a power-function EMA whose profile has relative standard deviation σ_rel
    (EDM2, eq. 3: σ_rel² = (γ + 1) / ((γ + 2)² (γ + 3)), solved for its largest real root)."""
    if not 0.0 < sigma_rel <= MAX_SIGMA_REL:
        raise ValueError(f"EMA sigma_rel must lie in (0, {MAX_SIGMA_REL:.4f}], got {sigma_rel}")
    k = sigma_rel**-2.0
    roots = np.roots([1.0, 7.0, 16.0 - k, 12.0 - k])
    real = roots[(np.abs(roots.imag) < 1e-6) & (roots.real > -1.0)].real
    # at the widest σ_rel the two roots meet, and rounding can make them a complex pair
    return float(real.max()) if real.size else float(GAMMA_WIDEST)
