"""Training the VAE baseline (`dtools train --model vae`).

One step: take the next --batch-size images x (shuffled, flipped at random, in [-1, 1]), encode them to
q(z|x) = N(μ, σ²), draw z = μ + σ·ε with ε ~ N(0, I) (the reparameterisation), decode, and minimise the
batch mean of Σ (x - x̂)² + --kl-weight · KL(q(z|x) || N(0, I)): the negative ELBO per image in nats
(up to a constant) for a Gaussian decoder with σ² = ½ at KL weight 1 (dtools.vae says why Gaussian).
Adam (lr 1e-3) updates encoder and decoder together; an EMA of both follows, as for the other two
models. metrics.jsonl records loss, recon and kl (per image) and grad_norm; RUN/loss.png draws the
three. The checkpoint holds the decoder: `dtools sample` decodes z ~ N(0, I), the prior.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from dtools.ema import EMA
from dtools.runtime import Runtime
from dtools.train.config import TrainConfig
from dtools.train.distributed import Group
from dtools.train.method import Method, NonFiniteLoss, Plot, RealBatch, Weights, parameters
from dtools.train.run import LOSS_PLOT
from dtools.vae import VAE, VAEConfig, elbo_terms


class Vae(Method):
    """Encoder and decoder under one Adam, an EMA of both."""

    model_type = "vae"
    plots = (Plot(LOSS_PLOT, "VAE loss per image: recon + KL weight x kl", ("loss", "recon", "kl")),)

    def __init__(self, cfg: TrainConfig, rt: Runtime, real_batch: RealBatch):
        super().__init__(cfg, rt, real_batch)
        self.vae = VAE(VAEConfig.from_dict(cfg.model)).to(self.device)
        self.ema = EMA(self.vae, cfg.ema_decay, cfg.ema_warmup, cfg.ema_length)
        self.optimizer = torch.optim.Adam(self.vae.parameters(), lr=cfg.lr)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.rt.precision == "fp16")
        self.net = self.vae  # what a step calls (DistributedDataParallel around it: `distribute`)

    def distribute(self, group: Group) -> None:
        super().distribute(group)
        self.net = group.wrap(self.vae)

    def train_step(self) -> dict[str, float]:
        cfg = self.cfg
        self.vae.train()
        self.optimizer.zero_grad(set_to_none=True)
        x = self.real_batch().images  # (b, C, H, W) in [-1, 1]: b = B / processes
        noise = torch.randn(cfg.batch_size, cfg.model["latent_dim"], device=self.device)  # (B, latent)
        with self.rt.autocast():
            x_hat, mean, logvar = self.net(x, self.group.shard(noise))
        recon, kl = elbo_terms(x, x_hat, mean, logvar)  # (B,), (B,)
        loss = (recon + cfg.kl_weight * kl).mean()
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise NonFiniteLoss(f"loss is {loss_value}")
        self.scaler.scale(loss).backward()
        grad_norm = self.apply_gradients(self.optimizer, self.vae, None)
        return {"loss": loss_value, "recon": float(recon.detach().mean()), "kl": float(kl.detach().mean()),
                "grad_norm": grad_norm}

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer]

    def record(self, means: dict[str, float]) -> dict[str, Any]:
        return {"loss": means["loss"], "recon": means["recon"], "kl": means["kl"], "lr": self.lr,
                "grad_norm": means["grad_norm"]}

    def sample(self, seeds: list[int]) -> torch.Tensor:
        """The EMA decoder on z ~ N(0, I) per seed (the prior)."""
        from dtools.samplers import generate_from_prior

        def decode(z: torch.Tensor) -> torch.Tensor:
            with self.rt.autocast():
                return self.ema.module.decoder(z).float()

        return generate_from_prior(decode, self.cfg.model["latent_dim"], seeds, device=self.device)

    def networks(self) -> dict[str, torch.nn.Module]:
        return {"weights": self.vae, "EMA weights": self.ema.module}

    def checkpoint(self) -> tuple[Weights, dict[str, Any], dict[str, Any]]:
        cfg = self.cfg
        header = {"model_type": self.model_type, "model": cfg.model, "kl_weight": cfg.kl_weight,
                  **self.ema.header(), "image_size": cfg.image_size, "channels": cfg.channels}
        weights = {"ema": self.ema.module.decoder.state_dict(), "raw": self.vae.decoder.state_dict()}
        return weights, cfg.model, header

    def load_weights(self, weights: dict[str, torch.Tensor]) -> str:
        self.vae.decoder.load_state_dict(weights, strict=True)
        self.ema.module.decoder.load_state_dict(weights, strict=True)
        return "the encoder starts afresh (a checkpoint holds only the decoder)"

    def state_parts(self) -> tuple[dict[str, torch.nn.Module], dict[str, Any]]:
        return {"raw": self.vae, "ema": self.ema.module}, {"adam": (self.optimizer, self.vae)}

    def describe(self) -> str:
        return (f"vae, {parameters(encoder=self.vae.encoder, decoder=self.vae.decoder)}, "
                f"KL weight {self.cfg.kl_weight:g}")

    def compile(self) -> None:
        self.vae.compile()
