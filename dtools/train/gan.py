"""Training the DCGAN baseline (`dtools train --model dcgan`), as the seed report did.

One training step is one round of the update ratio `--d-steps D:G` (default 1:1):

1. D discriminator updates, each on a fresh real batch (the next --batch-size images of the shuffled data,
   flipped at random, in [-1, 1]) and a fresh fake batch G(z), z ~ N(0, I): the loss is
   BCE(D(real), 1) + BCE(D(fake), 0) (Goodfellow et al. 2014, as PyTorch's DCGAN example sums it);
2. then G generator updates, each on a fresh z: the non-saturating loss BCE(D(G(z)), 1); after each
   one, the EMA of the generator's weights moves (the seed applied the EMA to its GAN too, after
   Yazıcı et al., "The unusual effectiveness of averaging in GAN training"); that EMA is what
   `dtools sample` uses by default, with BatchNorm statistics measured for its averaged weights on
   2,048 of its own samples at each checkpoint (standing statistics: dcgan.standing_statistics).

So "1:2" is one discriminator update for every two generator updates, the seed's choice ("1:1" made
its discriminator too strong, "1:5" blurred the images); "2:1" gives the discriminator the extra
steps instead (WGAN's n_critic direction). Both networks use Adam with lr --lr (2e-4) and β1 = 0.5
(Radford et al. 2016). metrics.jsonl records loss_d and loss_g (means over the step's updates), and
the discriminator's accuracy on the real and on the fake images of its updates (d_acc_real: share of
real images it calls real, logit > 0; d_acc_fake: share of fakes it calls fake); RUN/loss.png and
RUN/accuracy.png draw them (the seed's figures 15 and 17).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from dtools.dcgan import STANDING_IMAGES, DCGANConfig, Discriminator, Generator, standing_statistics
from dtools.ema import EMA
from dtools.runtime import Runtime
from dtools.train.config import TrainConfig, parse_ratio
from dtools.train.distributed import Group
from dtools.train.method import Method, NonFiniteLoss, Plot, RealBatch, Weights, parameters
from dtools.train.run import ACCURACY_PLOT, LOSS_PLOT

ADAM_BETAS = (0.5, 0.999)  # Radford et al. 2016: β1 = 0.5 steadied training where 0.9 oscillated


def _finite(value: torch.Tensor, what: str) -> float:
    v = float(value)
    if not math.isfinite(v):
        raise NonFiniteLoss(f"{what} is {v}")
    return v


class Dcgan(Method):
    """A DCGAN generator and discriminator, two Adams, an EMA of the generator."""

    model_type = "dcgan"
    plots = (Plot(LOSS_PLOT, "DCGAN losses", ("loss_d", "loss_g")),
             Plot(ACCURACY_PLOT, "discriminator accuracy", ("d_acc_real", "d_acc_fake"), ylabel="accuracy",
                  log_y=False, ylim=(-0.02, 1.02)))

    def __init__(self, cfg: TrainConfig, rt: Runtime, real_batch: RealBatch):
        super().__init__(cfg, rt, real_batch)
        net = DCGANConfig.from_dict(cfg.model)
        self.generator = Generator(net).to(self.device)
        self.discriminator = Discriminator(net).to(self.device)
        self.ema = EMA(self.generator, cfg.ema_decay, cfg.ema_warmup, cfg.ema_length)
        self._standing: tuple[int, Generator] | None = None  # (EMA updates, `sampler()` for them)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=cfg.lr, betas=ADAM_BETAS)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=cfg.lr, betas=ADAM_BETAS)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.rt.precision == "fp16")
        self.d_updates, self.g_updates = parse_ratio(cfg.d_steps)
        # what a step calls to train each (DistributedDataParallel around it: `distribute`)
        self.g_net, self.d_net = self.generator, self.discriminator

    def distribute(self, group: Group) -> None:
        super().distribute(group)
        self.g_net, self.d_net = group.wrap(self.generator), group.wrap(self.discriminator)

    def _z(self) -> torch.Tensor:
        """z for the whole batch, of several processes this one's slice (b, latent)."""
        return self.group.shard(torch.randn(self.cfg.batch_size, self.cfg.model["latent_dim"],
                                            device=self.device))

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.opt_g, self.opt_d]

    def _update(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()

    def train_step(self) -> dict[str, float]:
        """D discriminator updates, then G generator updates (--d-steps D:G). Of several processes,
        D's updates go through d_net (DDP averages its gradients), G's through g_net and D itself
        (frozen: D's weights take no gradient there)."""
        G, D, rt = self.generator, self.discriminator, self.rt
        G.train()
        D.train()
        d_loss = acc_real = acc_fake = g_loss = 0.0
        for _ in range(self.d_updates):
            real = self.real_batch().images  # (b, C, H, W): b = B / processes
            with torch.no_grad(), rt.autocast():
                fake = G(self._z())
            with rt.autocast():
                logits_real, logits_fake = self.d_net(real).float(), self.d_net(fake).float()  # (b,), (b,)
            loss = (F.binary_cross_entropy_with_logits(logits_real, torch.ones_like(logits_real))
                    + F.binary_cross_entropy_with_logits(logits_fake, torch.zeros_like(logits_fake)))
            d_loss += _finite(loss.detach(), "discriminator loss")
            self._update(self.opt_d, loss)
            acc_real += float((logits_real > 0).float().mean())
            acc_fake += float((logits_fake < 0).float().mean())
        D.requires_grad_(False)  # the generator's updates need D's input gradients, not its weights'
        try:
            for _ in range(self.g_updates):
                with rt.autocast():
                    logits = D(self.g_net(self._z())).float()
                loss = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
                g_loss += _finite(loss.detach(), "generator loss")
                self._update(self.opt_g, loss)
                self.ema.update(G)
        finally:
            D.requires_grad_(True)
        d, g = self.d_updates, self.g_updates
        return {"loss_d": d_loss / d, "loss_g": g_loss / g, "d_acc_real": acc_real / d,
                "d_acc_fake": acc_fake / d}

    def sampler(self) -> Generator:
        """The EMA generator with its standing BatchNorm statistics (dcgan.standing_statistics), what
        the checkpoint holds as its "ema" weights and the grids draw with; the EMA itself (what the
        training state holds) is left as it is. Measured once per EMA update (a grid and a checkpoint
        of the same step share it)."""
        if self._standing is None or self._standing[0] != self.ema.num_updates:
            self._standing = (self.ema.num_updates,
                              standing_statistics(self.ema.module, self.cfg.seed, self.rt.autocast()))
        return self._standing[1]

    def sample(self, seeds: list[int]) -> torch.Tensor:
        """The EMA generator (standing statistics) on z ~ N(0, I) per seed."""
        from dtools.samplers import generate_from_prior

        generator = self.sampler()

        def decode(z: torch.Tensor) -> torch.Tensor:
            with self.rt.autocast():
                return generator(z).float()

        return generate_from_prior(decode, self.cfg.model["latent_dim"], seeds, device=self.device)

    def networks(self) -> dict[str, torch.nn.Module]:
        return {"generator weights": self.generator, "EMA generator weights": self.ema.module,
                "discriminator weights": self.discriminator}

    def checkpoint(self) -> tuple[Weights, dict[str, Any], dict[str, Any]]:
        cfg = self.cfg
        header = {"model_type": self.model_type, "model": cfg.model, "d_steps": cfg.d_steps,
                  **self.ema.header(), "ema_batchnorm": f"standing statistics of {STANDING_IMAGES} samples",
                  "image_size": cfg.image_size, "channels": cfg.channels}
        return {"ema": self.sampler().state_dict(), "raw": self.generator.state_dict()}, cfg.model, header

    def load_weights(self, weights: dict[str, torch.Tensor]) -> str:
        self.generator.load_state_dict(weights, strict=True)
        self.ema.module.load_state_dict(weights, strict=True)
        return "the discriminator starts afresh (a checkpoint holds only the generator)"

    def state_parts(self) -> tuple[dict[str, torch.nn.Module], dict[str, Any]]:
        modules = {"raw": self.generator, "ema": self.ema.module, "disc": self.discriminator}
        return modules, {"adam": (self.opt_g, self.generator), "adam_disc": (self.opt_d, self.discriminator)}

    def describe(self) -> str:
        return (f"dcgan, {parameters(generator=self.generator, discriminator=self.discriminator)}, "
                f"D:G updates {self.d_updates}:{self.g_updates}")

    def compile(self) -> None:
        self.generator.compile()
        self.discriminator.compile()
