"""The DDPM's training method (`dtools train --model unet`, the default): Ho et al. 2020, Algorithm 1.

A U-Net regresses the parameterization's target (ε, x0, v or EDM's F; dtools.diffusion) on images noised by
q(x_t | x0) at uniformly drawn timesteps, with the loss weight of --min-snr-gamma; Adam (fused where
supported), gradient clipping, an EMA of the weights that `dtools sample` and the run's grids use.
The Trainer (loop.py) drives it like any other Method.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch

from dtools.diffusion import Schedule, draw_timesteps, loss_weight, network_input, q_sample, training_target
from dtools.ema import EMA
from dtools.posthoc_ema import TRACKED
from dtools.runtime import Runtime
from dtools.sampler_specs import DEFAULT_SAMPLER
from dtools.train import distributed
from dtools.train.config import TrainConfig
from dtools.train.data import data_classes
from dtools.train.method import Method, NonFiniteLoss, Plot, RealBatch, Weights
from dtools.train.run import LOSS_PLOT
from dtools.train.uncertainty import LogVariance, uncertainty_loss
from dtools.unet import UNet, UNetConfig, count_parameters


def schedule_on(schedule: Schedule, device: torch.device) -> Schedule:
    """The schedule's tables on the training device (MPS has no float64: there they become float32)."""
    if device.type == "mps":
        return Schedule(*(getattr(schedule, f).float().to(device) for f in schedule.__dataclass_fields__))
    return schedule.to(device)


class Ddpm(Method):
    """The seed's DDPM: a U-Net regressing the parameterization's target on noised images (Ho et al.
    2020, Algorithm 1), Adam, an EMA of the weights for sampling."""

    model_type = "unet"
    plots = (Plot(LOSS_PLOT, "training loss", ("loss",)),)
    clips = True

    def __init__(self, cfg: TrainConfig, rt: Runtime, real_batch: RealBatch):
        super().__init__(cfg, rt, real_batch)
        self.schedule_cpu = Schedule.from_betas(cfg.betas)  # float64; what the samplers get
        self.schedule = schedule_on(self.schedule_cpu, self.device)
        self.model = rt.prepare(UNet(UNetConfig.from_dict(cfg.model)))  # on the device, channels-last
        self.ema = EMA(self.model, cfg.ema_decay, cfg.ema_warmup, cfg.ema_length)
        if cfg.posthoc_ema:
            self.tracked = tuple(EMA(self.model, sigma_rel=s) for s in TRACKED)
        self.optimizer = rt.adam(self.model.parameters(), lr=cfg.lr)  # fused where supported
        # --learned-weight: EDM2's u(σ) (train/uncertainty.py), trained beside the network by its own Adam
        self.logvar: LogVariance | None = None
        if cfg.learned_weight:
            self.logvar = LogVariance(self.schedule_cpu).to(self.device)
            self.logvar_optimizer = torch.optim.Adam(self.logvar.parameters(), lr=cfg.lr)
        self.logvar_net = self.logvar  # what a step calls (DistributedDataParallel around it: `distribute`)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.rt.precision == "fp16")
        self.net = self.model  # what a step calls (DistributedDataParallel around it: `distribute`)

    def distribute(self, group: distributed.Group) -> None:
        super().distribute(group)
        self.net = group.wrap(self.model)
        if self.logvar is not None:
            self.logvar_net = group.wrap(self.logvar)

    def draw_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """A whole batch's images, timesteps, noise and (class-conditional) classes, drawn in one fixed
        order (so --grad-accum splits exactly the batch that an unsplit step would see). Of several
        processes: this one's slice of the whole batch's draws (every process draws them all, the same).
        A class is replaced by the null class with probability --cond-drop (label dropout)."""
        cfg, device, shard = self.cfg, self.device, self.group.shard
        batch = self.real_batch()
        x0 = batch.images  # (b, C, H, W) in [-1, 1]: b = B / processes
        t = draw_timesteps(self.schedule_cpu, cfg.batch_size, cfg.t_dist, device)  # (B,)
        eps = torch.randn((cfg.batch_size, *x0.shape[1:]), device=device)  # (B, C, H, W)
        y = None
        if cfg.num_classes:  # drawn after the rest: an unconditional run's draws are as before
            assert batch.labels is not None
            drop = shard(torch.rand(cfg.batch_size, device=device) < cfg.cond_drop)  # (b,)
            y = torch.where(drop, torch.full_like(batch.labels, cfg.num_classes), batch.labels)
        return x0, shard(t), shard(eps), y

    def train_step(self) -> dict[str, float]:
        """One optimizer step; returns its loss and gradient norm or raises NonFiniteLoss before updating."""
        cfg, s, param = self.cfg, self.schedule, self.cfg.parameterization
        self.model.train()
        for optimizer in self.optimizers():
            optimizer.zero_grad(set_to_none=True)
        total_loss = torch.zeros((), device=self.device)  # the weighted MSE (what the loss plot shows)
        total_objective = torch.zeros((), device=self.device)  # what the step minimizes, if not that
        x0_all, t_all, eps_all, y_all = self.draw_batch()
        b = x0_all.shape[0]  # this process's images (DDP averages the processes' gradients)
        micro = b // cfg.grad_accum
        ys = [None] * cfg.grad_accum if y_all is None else y_all.split(micro)
        for i, (x0, t, eps, y) in enumerate(zip(x0_all.split(micro), t_all.split(micro), eps_all.split(micro),
                                                ys, strict=True)):
            # x_t, or c_in x_t, in the network's memory format
            x_in = self.rt.layout(network_input(s, param, q_sample(s, x0, t, eps), t))
            target = training_target(s, param, x0, eps, t)
            with self.rt.autocast():
                out = self.net(x_in, t) if y is None else self.net(x_in, t, y)
            per_sample = (out.float() - target).pow(2).mean(dim=(1, 2, 3))  # (b,)
            weighted = loss_weight(s, param, t, cfg.min_snr_gamma, cfg.min_snr_floor) * per_sample  # (b,)
            # the mean over the whole batch, accumulated one micro-batch at a time
            loss = weighted.sum() / b
            objective = loss if self.logvar_net is None else \
                uncertainty_loss(weighted, self.logvar_net(t)).sum() / b
            sync = i == cfg.grad_accum - 1
            with self.group.no_sync(self.net, sync=sync), self.logvar_sync(sync):
                self.scaler.scale(objective).backward()
            total_loss += loss.detach()
            if self.logvar_net is not None:
                total_objective += objective.detach()
        loss_value = float(total_loss)
        # read back only where it differs from the loss: without u, no second device sync a step
        objective_finite = self.logvar is None or math.isfinite(float(total_objective))
        if not (math.isfinite(loss_value) and objective_finite):
            raise NonFiniteLoss(f"loss is {loss_value}")
        also = () if self.logvar is None else (self.logvar_optimizer,)
        grad_norm = self.apply_gradients(self.optimizer, self.model, cfg.grad_clip, also=also)
        return {"loss": loss_value, "grad_norm": grad_norm}

    def logvar_sync(self, sync: bool) -> contextlib.AbstractContextManager:
        """The u network's side of an accumulating backward pass (see `group.no_sync`)."""
        if self.logvar_net is None:
            return contextlib.nullcontext()
        return self.group.no_sync(self.logvar_net, sync)

    def record(self, means: dict[str, float]) -> dict[str, Any]:
        return {"loss": means["loss"], "lr": self.lr, "grad_norm": means["grad_norm"]}

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer] if self.logvar is None else [self.optimizer, self.logvar_optimizer]

    def sample(self, seeds: list[int]) -> torch.Tensor:
        """EMA samples with `dtools sample`'s default sampler and steps; of a class-conditional model,
        image i of class i mod the classes (unguided), as `dtools sample --class` draws them."""
        from dtools.samplers import generate

        cfg = self.cfg

        model_fn = self.rt.model_fn(self.ema.module)  # as `dtools sample` runs it
        shape = (cfg.channels, cfg.image_size, cfg.image_size)
        cond = None
        if cfg.num_classes:
            cond = torch.arange(len(seeds), device=self.device) % cfg.num_classes  # (B,)
        return generate(model_fn, self.schedule_cpu, cfg.parameterization, shape, seeds,
                        sampler=DEFAULT_SAMPLER, device=self.device, cond=cond)

    def networks(self) -> dict[str, torch.nn.Module]:
        return {"weights": self.model, "EMA weights": self.ema.module}

    def checkpoint(self) -> tuple[Weights, dict[str, Any], dict[str, Any]]:
        cfg = self.cfg
        header = {
            "model": cfg.model, "parameterization": cfg.parameterization,
            "betas": [float(b) for b in cfg.betas],  # the exact float64 schedule
            **self.ema.header(), "image_size": cfg.image_size, "channels": cfg.channels,
        }
        if cfg.classes:
            header["condition"] = {"kind": "class", "classes": list(cfg.classes)}
        return {"ema": self.ema.state_dict(), "raw": self.model.state_dict()}, cfg.model, header

    def state_parts(self) -> tuple[dict[str, torch.nn.Module], dict[str, Any]]:
        modules = {"raw": self.model, "ema": self.ema.module, **self.tracked_parts()}
        optimizers = {"adam": (self.optimizer, self.model)}
        if self.logvar is not None:
            modules["logvar"] = self.logvar
            optimizers["adam_logvar"] = (self.logvar_optimizer, self.logvar)
        return modules, optimizers

    def load_weights(self, weights: dict[str, torch.Tensor]) -> str:
        self.model.load_state_dict(weights, strict=True)
        self.ema.module.load_state_dict(weights, strict=True)
        for ema in self.tracked:
            ema.module.load_state_dict(weights, strict=True)
        return ""

    def describe(self) -> str:
        cfg = self.cfg
        text = f"preset {cfg.preset}, {count_parameters(self.model) / 1e6:.2f}M parameters"
        text += "" if cfg.flip else ", no flips"
        if cfg.classes:
            return text + (f", conditioned on {cfg.num_classes} classes (label dropout {cfg.cond_drop:g}: "
                           "the null class for guidance)")
        if cfg.cond == "none" and data_classes(cfg.data) is not None:
            return text + ", unconditional (--cond none: the data's labels are not used)"
        return text

    def compile(self) -> None:
        self.model.compile()
