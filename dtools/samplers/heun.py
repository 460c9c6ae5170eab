"""Heun's method (Karras et al. 2022, Alg. 1 without churn): second order on the probability-flow ODE
dx̂/dσ̂ = ε̂ in x̂ = x/α, σ̂ = σ/α; two network calls per step (2·steps - 2 in all)."""

from __future__ import annotations

import math

import torch

from dtools.samplers.chain import Callback, Chain, Denoiser
from dtools.samplers.seeds import NoiseFn


def heun(denoise: Denoiser, x: torch.Tensor, chain: Chain, noise: NoiseFn,
         callback: Callback | None = None) -> torch.Tensor:
    """Heun's method on the probability-flow ODE (Karras et al. 2022, Alg. 1, no churn): in x̂ = x/α
    and σ̂ = σ/α the ODE is dx̂/dσ̂ = ε̂; each Euler step (= a DDIM step) is corrected with the slope
    at its end. The first step, from σ̂ = 10²..10⁴ (∞ at zero terminal SNR), stays Euler: there
    ε̂ ≈ x_T is nearly constant, while the trapezoid rule over that huge interval is unstable."""
    for i, k in enumerate(reversed(range(len(chain)))):
        x = denoise.constrain(x, chain, k)
        x0, eps = denoise(x, int(chain.timesteps[k]))
        chain.report(callback, i, k, x, x0)
        if k == 0:
            return x0
        ab, ab_next = float(chain.alphas_cumprod[k]), chain.alpha_cumprod_prev(k)
        alpha_n, sigma_n = math.sqrt(ab_next), math.sqrt(1.0 - ab_next)
        x_euler = alpha_n * x0 + sigma_n * eps  # α_n (x̂ + (σ̂_n - σ̂) ε̂)
        if i == 0:
            x = x_euler
            continue
        alpha, sigma = math.sqrt(ab), math.sqrt(1.0 - ab)
        _, eps_n = denoise(x_euler, int(chain.timesteps[k - 1]))
        x_hat = x / alpha + (sigma_n / alpha_n - sigma / alpha) * 0.5 * (eps + eps_n)
        x = alpha_n * x_hat
    raise AssertionError("unreachable: the chain ends at k = 0")
