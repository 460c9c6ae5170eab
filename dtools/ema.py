"""Exponential moving average of network weights (the seed's θ̄ ← 0.999 θ̄ + 0.001 θ, used for sampling).

With `warmup`, the decay used at update n is min(decay, (1 + n) / (10 + n)): the average forgets
its random start quickly and reaches the full decay after a few thousand updates, which matters
for short CPU runs where 0.999 would still be dominated by early weights (docs/train.md).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Holds a frozen copy of a module whose floating-point tensors track the online module."""

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = False):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next update will use."""
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
