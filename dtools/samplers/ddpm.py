"""Ancestral sampling (Ho et al. 2020, Alg. 2) with Σ = β_t or β̃_t; at steps < T it runs on the
respaced chain β'_k = 1 - ᾱ_{t_k}/ᾱ_{t_{k-1}}."""

from __future__ import annotations

import torch

from dtools.diffusion import Schedule, q_posterior, reverse_variance
from dtools.samplers.chain import Callback, Chain, Denoiser
from dtools.samplers.seeds import NoiseFn


def ddpm(denoise: Denoiser, x: torch.Tensor, chain: Chain, noise: NoiseFn, callback: Callback | None = None,
         *, variance: str) -> torch.Tensor:
    """Ancestral sampling (Ho et al. 2020): x_{t-1} = μ̃(x_t, x0_hat) + sqrt(Σ_t) z, Σ_t = β_t or β̃_t
    (`variance` "beta" or "posterior")."""
    respaced = Schedule.from_betas(chain.betas).to(x.device)  # index k here is original t_k
    for i, k in enumerate(reversed(range(len(chain)))):
        x = denoise.constrain(x, chain, k)
        x0, _ = denoise(x, int(chain.timesteps[k]))
        chain.report(callback, i, k, x, x0)
        kk = torch.full((x.shape[0],), k, dtype=torch.int64, device=x.device)
        mean, _ = q_posterior(respaced, x0, x, kk)
        if k > 0:  # no noise on the last step, which lands on x0 (Σ = β̃ would be 0 there anyway)
            x = mean + reverse_variance(respaced, variance, kk, x).sqrt() * noise()
        else:
            x = mean
    return x
