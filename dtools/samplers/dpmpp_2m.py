"""DPM-Solver++(2M) (Lu et al. 2022, Alg. 2): data prediction, multistep in λ = log(α/σ)."""

from __future__ import annotations

import math

import torch

from dtools.samplers.chain import Callback, Chain, Denoiser
from dtools.samplers.seeds import NoiseFn

MAX_STEP_RATIO = 2.0  # dpm++2m steps longer than this many times the previous one are first order


def dpmpp_2m(denoise: Denoiser, x: torch.Tensor, chain: Chain, noise: NoiseFn,
             callback: Callback | None = None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2): x_next = (σ_n/σ) x + α_n (1 - e^{-h}) D with
    h = λ_n - λ, D = (1 + r) x0_hat - r x0_hat_prev, r = h / (2 h_prev); first order on the first
    step, on a step over MAX_STEP_RATIO times longer than the previous one, and on the last one, which
    lands on x0 (λ = ∞)."""
    x0_prev, h_prev = None, math.inf
    for i, k in enumerate(reversed(range(len(chain)))):
        x = denoise.constrain(x, chain, k)
        x0, _ = denoise(x, int(chain.timesteps[k]))
        chain.report(callback, i, k, x, x0)
        if k == 0:
            return x0
        ab, ab_next = float(chain.alphas_cumprod[k]), chain.alpha_cumprod_prev(k)
        alpha, sigma = math.sqrt(ab), math.sqrt(1.0 - ab)
        alpha_n, sigma_n = math.sqrt(ab_next), math.sqrt(1.0 - ab_next)
        exp_neg_h = alpha * sigma_n / (sigma * alpha_n)  # e^{-h}; 0 when ᾱ = 0 (λ = -∞)
        h = -math.log(exp_neg_h) if exp_neg_h > 0 else math.inf
        r = h / (2.0 * h_prev)  # 0 on the first step and after a step from λ = -∞
        # A step much longer than the one before it (the last step of a linspace or leading chain, 3.6-4.9x
        # longer) extrapolates x0_hat far beyond where it was measured: take it first order, as the
        # DPM-Solver reference code does for its final steps.
        second_order = x0_prev is not None and 0 < r <= MAX_STEP_RATIO / 2
        d = (1.0 + r) * x0 - r * x0_prev if second_order else x0
        x = (sigma_n / sigma) * x + alpha_n * (1.0 - exp_neg_h) * d
        x0_prev, h_prev = x0, h
    raise AssertionError("unreachable: the chain ends at k = 0")
