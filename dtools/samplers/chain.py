"""What every sampler walks and calls: the `Chain` of timesteps it visits and the `Denoiser`, the
network as a sampler sees it (x_t, t -> x0_hat, eps_hat in float64, the condition passed along).

The previous timestep of t_k is always the previous element t_{k-1} of the chosen subset (diffusers'
DDIM gets this wrong for non-leading spacings: its issues 12633 and 11347). The network is called
with the ORIGINAL timestep index; only the schedule is respaced (improved-diffusion's method).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from dtools.diffusion import (
    Schedule,
    alphas_cumprod,
    network_input,
    respace,
    spaced_timesteps,
    split_prediction,
)
from dtools.errors import OptionError
from dtools.samplers.guidance import Guidance

# (x_t (B,C,H,W) f32, t (B,) int64[, cond]) -> out (B,C,H,W); cond only when the batch has a condition
ModelFn = Callable[..., torch.Tensor]
Callback = Callable[[dict], None]
# (denoise, x_t (B,C,H,W) float64, chain, k) -> x_t: what a step starts from (inpainting's known region)
Constraint = Callable[["Denoiser", torch.Tensor, "Chain", int], torch.Tensor]


@dataclass(frozen=True)
class Denoiser:
    """The network seen by a sampler: (x_t, t) -> (x0_hat, eps_hat), float64.

    With `clip_x0`, x0_hat is clamped to [-1, 1] and eps_hat recomputed from it, so that every
    sampler's update stays consistent with the clipped prediction (as improved-diffusion does).
    `cond` (e.g. class labels (B,)) goes to every network call as `model_fn(x_t, t, cond)`; without
    one the network is called as `model_fn(x_t, t)`. With `guidance` (dtools.samplers.guidance), where
    it applies, x0_hat and eps_hat are pushed away from the weak denoiser's: D + w (D − D_weak).
    A `constraint` (dtools.samplers.editing.Inpaint) rewrites the x_t each step starts from: every
    sampler calls `constrain` at the top of its step, which without one returns x_t as it is.
    """

    model_fn: ModelFn
    schedule: Schedule  # the full, original schedule (float64) on the sampling device
    parameterization: str
    clip_x0: bool = True
    cond: torch.Tensor | None = None
    guidance: Guidance | None = None
    constraint: Constraint | None = None

    def constrain(self, x: torch.Tensor, chain: Chain, k: int) -> torch.Tensor:
        """The x_t that step k of `chain` starts from: x itself, or what the constraint makes of it."""
        return x if self.constraint is None else self.constraint(self, x, chain, k)

    def __call__(self, x: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        tt = torch.full((x.shape[0],), int(t), dtype=torch.int64, device=x.device)  # (B,)
        conds = () if self.cond is None else (self.cond,)
        x_in = network_input(self.schedule, self.parameterization, x.float(), tt)  # x_t, or c_in x_t
        out = self.model_fn(x_in, tt, *conds)  # (B, C, H, W)
        x0, eps = split_prediction(self.schedule, self.parameterization, out, x, tt)
        g = self.guidance
        if g is not None and g.applies(float(self._alphas_cumprod[int(t)])):
            weak = () if g.weak_cond is None else (g.weak_cond,)
            x_weak = network_input(self.schedule, g.weak_parameterization, x.float(), tt)
            out_weak = g.weak_fn(x_weak, tt, *weak)  # (B, C, H, W)
            x0_weak, eps_weak = split_prediction(self.schedule, g.weak_parameterization, out_weak, x, tt)
            x0 = x0 + g.weight * (x0 - x0_weak)  # both linear in the outputs: x_t = √ᾱ x0 + √(1-ᾱ) ε holds
            eps = eps + g.weight * (eps - eps_weak)
        if self.clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
            ab = float(self._alphas_cumprod[int(t)])
            eps = (x - math.sqrt(ab) * x0) / math.sqrt(1.0 - ab)
        return x0, eps

    @cached_property
    def _alphas_cumprod(self) -> np.ndarray:  # on the CPU: reading it costs no device sync
        return self.schedule.alphas_cumprod.cpu().numpy()


@dataclass(frozen=True)
class Chain:
    """The timesteps a sampler visits: t_{K-1} > ... > t_0 (original indices), then x0 (ᾱ = 1).

    `alphas_cumprod[k]` is ᾱ_{t_k} of the original schedule, and `betas` the respaced β'_k with
    cumprod(1 - β') = ᾱ_{t_k}; `alpha_cumprod_prev(0)` is 1, the clean image.
    """

    timesteps: np.ndarray  # int64 [K], ascending
    alphas_cumprod: np.ndarray  # float64 [K]
    betas: np.ndarray  # float64 [K]

    @classmethod
    def make(cls, betas: np.ndarray, steps: int, spacing: str = "trailing") -> Chain:
        T = int(np.asarray(betas).shape[0])
        if not 2 <= steps <= T:
            raise OptionError("--steps", f"must lie in [2, {T}] for this {T}-step schedule, got {steps}")
        ts = spaced_timesteps(T, steps, spacing)
        return cls(ts, alphas_cumprod(betas)[ts], respace(betas, ts))

    def truncate(self, k: int) -> Chain:
        """The sub-chain t_k > ... > t_0 (then x0) of a chain that starts at t_k (SDEdit's start)."""
        assert 0 <= k < len(self), (k, len(self))
        return Chain(self.timesteps[:k + 1], self.alphas_cumprod[:k + 1], self.betas[:k + 1])

    def __len__(self) -> int:
        return int(self.timesteps.shape[0])

    def alpha_cumprod_prev(self, k: int) -> float:
        return 1.0 if k == 0 else float(self.alphas_cumprod[k - 1])

    def report(self, callback: Callback | None, i: int, k: int, x: torch.Tensor, x0: torch.Tensor) -> None:
        """Tell `callback` (if any) about step i, at chain index k: x_t and the predicted x0."""
        if callback is not None:
            callback({"step": i, "steps": len(self), "t": int(self.timesteps[k]), "x": x, "x0_hat": x0})
