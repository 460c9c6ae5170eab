"""EDM2's learned loss weighting (`dtools train --learned-weight`): Karras et al. 2024, section 2.4.

The loss of one image at noise level σ is its weighted MSE L (diffusion.loss_weight times the
squared error against diffusion.training_target). Instead of L the step minimizes

    L / exp(u(σ)) + u(σ)

where u is a small learned function of the noise level (Kendall et al. 2018's uncertainty weighting).
For a fixed σ the minimum over u lies at u(σ) = ln E[L | σ], where the term equals 1 + u: every noise
level then pulls on the network with the same expected weight, whatever the size of its loss, and the
weight follows the loss as training goes on instead of a hand-set γ. The network never sees u; sampling
does not use it, and it lives in the training state only.

u takes Fourier features of c_noise = ln(σ_t)/4, EDM's noise conditioning, with σ_t = sqrt((1-ᾱ_t)/ᾱ_t)
(clamped where ᾱ_t reaches 0 or 1), and maps them linearly to one number: EDM2's `logvar` head, here a
plain linear layer that starts at zero, so the first steps train on L + 0 exactly as without it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dtools.diffusion import Schedule

FEATURES = 128  # EDM2's logvar_channels
LOG_SIGMA_LIMIT = 20.0  # |ln σ_t| beyond this (ᾱ_t = 0 or 1) is clamped: cos of an infinite phase is NaN


def c_noise(s: Schedule) -> torch.Tensor:
    """EDM's noise conditioning ln(σ_t)/4 of every timestep, float32 [T]."""
    return (s.log_sigma().cpu().clamp(-LOG_SIGMA_LIMIT, LOG_SIGMA_LIMIT) / 4).float()


class LogVariance(nn.Module):
    """u(σ_t) for a batch of timesteps: fixed random Fourier features of c_noise, then a linear layer."""

    def __init__(self, s: Schedule, features: int = FEATURES):
        super().__init__()
        g = torch.Generator().manual_seed(0)  # fixed features: a resumed run rebuilds the same ones
        self.register_buffer("c_noise", c_noise(s), persistent=False)  # [T]
        self.register_buffer("freqs", 2 * math.pi * torch.randn(features, generator=g), persistent=False)
        self.register_buffer("phases", 2 * math.pi * torch.rand(features, generator=g), persistent=False)
        # the linear map, zero at the start (built without a draw: the run's random stream stays as without u)
        self.weight = nn.Parameter(torch.zeros(features))
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """u at timesteps t [B] (int64): float32 [B]."""
        x = self.c_noise[t.to(self.c_noise.device)]  # [B]
        features = math.sqrt(2) * torch.cos(torch.outer(x, self.freqs) + self.phases)  # [B, F], unit variance
        return features @ self.weight + self.bias


def uncertainty_loss(weighted_mse: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Per-sample L / exp(u) + u [B] from the weighted MSE L [B] and u [B]."""
    return weighted_mse * torch.exp(-u) + u
