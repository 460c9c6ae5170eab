"""A convolutional VAE (Kingma & Welling 2014): the seed report's other baseline.

Encoder: the DCGAN discriminator's body (strided 4x4 convs, BatchNorm, LeakyReLU 0.2, down to 4x4),
then one linear layer to the mean and log-variance of q(z|x) = N(μ, diag σ²). Decoder: the DCGAN
generator (dtools.dcgan.Generator), so the GAN and the VAE turn z into an image with the same network.

Likelihood: a Gaussian p(x|z) = N(x; decoder(z), σ² I) with a fixed σ² = 1/2 on the [-1, 1] pixel
scale, so -log p(x|z) = Σ_pixels (x - x̂)² up to a constant; the KL term is the closed form
KL(N(μ, σ²) || N(0, I)) = ½ Σ (μ² + σ² - 1 - log σ²). `elbo_terms` returns both per image; the loss
is recon + kl_weight · KL (kl_weight 1: the ELBO; other values: a β-VAE). Why not a Bernoulli
(binary cross-entropy): the pixels are colour intensities, not coin flips; cross-entropy on values
in between is not a normalised likelihood (Loaiza-Ganem & Cunningham 2019) and its minimum is not at
x̂ = x for grey values, while the Gaussian is the same noise model the diffusion loss uses.

Samples come from the prior: z ~ N(0, I), decoded. A checkpoint holds the decoder only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from dtools.dcgan import DCGANConfig, Generator, encoder_layers, init_weights


@dataclass
class VAEConfig(DCGANConfig):
    """The VAE's networks: the same four numbers as a DCGAN's (the decoder is a DCGAN generator)."""

    def decoder(self) -> DCGANConfig:
        return DCGANConfig(**dataclasses.asdict(self))

    def build(self) -> nn.Module:
        """The network a checkpoint of this config holds: the decoder (dtools.models)."""
        return Generator(self.decoder())

    def trained(self) -> dict[str, nn.Module]:
        """Every network a run of this config trains, by name (for their sizes)."""
        vae = VAE(self)
        return {"encoder": vae.encoder, "decoder": vae.decoder}


class Encoder(nn.Module):
    """images (B, C, H, W) -> (μ, log σ²), each (B, latent_dim)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.body = nn.Sequential(*encoder_layers(cfg), nn.Flatten())
        self.head = nn.Linear(cfg.widths()[0] * 16, 2 * cfg.latent_dim)  # from the 4x4 map
        init_weights(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.head(self.body(x)).chunk(2, dim=1)
        return mean, logvar


class VAE(nn.Module):
    """Encoder and decoder together (what training updates); `decoder` alone makes images."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.config = cfg.validate()
        self.encoder = Encoder(cfg)
        self.decoder = Generator(cfg.decoder())

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Reconstruct x through z = μ + σ·noise (the reparameterisation); returns (x̂, μ, log σ²)."""
        mean, logvar = self.encoder(x)
        z = mean + torch.exp(0.5 * logvar) * noise  # (B, latent)
        return self.decoder(z), mean, logvar


def elbo_terms(x: torch.Tensor, x_hat: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor):
    """Per image: the reconstruction term Σ (x - x̂)² (-log p(x|z) + const for σ² = ½) and
    KL(q(z|x) || N(0, I)); both (B,), in float32."""
    recon = (x_hat.float() - x.float()).pow(2).flatten(1).sum(1)
    mean, logvar = mean.float(), logvar.float()
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)
    return recon, kl
