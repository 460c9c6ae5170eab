"""DDIM (Song et al. 2021, eq. 12) with η: 0 is deterministic, 1 is `ddpm --variance posterior`."""

from __future__ import annotations

import math

import torch

from dtools.samplers.chain import Callback, Chain, Denoiser
from dtools.samplers.seeds import NoiseFn


def ddim(denoise: Denoiser, x: torch.Tensor, chain: Chain, noise: NoiseFn, callback: Callback | None = None,
         *, eta: float) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12): x_prev = sqrt(ᾱ_prev) x0_hat + sqrt(1-ᾱ_prev-σ²) ε̂ + σ z,
    σ = η sqrt((1-ᾱ_prev)/(1-ᾱ_t)) sqrt(1-ᾱ_t/ᾱ_prev)."""
    for i, k in enumerate(reversed(range(len(chain)))):
        x = denoise.constrain(x, chain, k)
        x0, eps = denoise(x, int(chain.timesteps[k]))
        chain.report(callback, i, k, x, x0)
        ab, ab_prev = float(chain.alphas_cumprod[k]), chain.alpha_cumprod_prev(k)
        sigma = eta * math.sqrt((1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev))
        x = math.sqrt(ab_prev) * x0 + math.sqrt(max(1.0 - ab_prev - sigma**2, 0.0)) * eps
        if sigma > 0:
            x = x + sigma * noise()
    return x
