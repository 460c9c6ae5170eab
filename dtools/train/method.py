"""What a training method (`--model`) brings to the Trainer, and the pieces every method shares.

The Trainer (dtools.train.loop) owns what all methods have in common: the run folder, the data and
its seeded batch stream, stop signals, --max-steps / --epochs / --max-minutes, the --log-every
windows of metrics.jsonl, the curves in RUN/, the checkpoint cadence and order, the handling of a
diverged run, the progress bar and --resume. A Method owns the rest: its networks, optimizers and
EMA (built when it is made, after the Trainer seeds torch), one training step (returning its named
losses and metrics), its sample grid, the weights and header of its model checkpoint, and the
tensors of its training state. The methods: "unet" (the DDPM, `ddpm.Ddpm`), "dcgan"
(`gan.Dcgan`) and "vae" (`vae.Vae`); each model type's spec (dtools.models) names its method. The
session's shared piece is here too: the metrics `Window` (signals.py answers Ctrl-C).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from dtools.ema import EMA
from dtools.models import MODEL_TYPES
from dtools.runtime import Runtime
from dtools.train.config import TrainConfig
from dtools.train.data import Batch, BatchStream
from dtools.train.distributed import Group
from dtools.train.state import capture, restore
from dtools.unet import count_parameters

RealBatch = Callable[[], Batch]  # the next training batch (images in [-1, 1], labels) on the device
Weights = dict[str, dict[str, torch.Tensor]]  # {"ema": state dict, "raw": state dict}


class NonFiniteLoss(Exception):
    """A step met a loss, gradient or weight that is not finite; nothing of it may be saved."""


@dataclass(frozen=True)
class Plot:
    """A picture of metrics.jsonl that a method keeps in RUN/ (rewritten at every checkpoint)."""

    file: str
    title: str
    keys: tuple[str, ...]  # the metrics.jsonl fields drawn
    ylabel: str = "loss"
    log_y: bool = True
    ylim: tuple[float, float] | None = None


class Method:
    """A way to train a generative model: build it with the run's config (torch already seeded), then
    the Trainer calls `train_step` once per step and the rest at checkpoints."""

    model_type: ClassVar[str]  # its spec's name (dtools.models.MODEL_TYPES), the --model value
    plots: ClassVar[tuple[Plot, ...]]
    clips: ClassVar[bool] = False  # whether --grad-clip applies (the hint when a run diverges)

    def __init__(self, cfg: TrainConfig, rt: Runtime, real_batch: RealBatch):
        self.cfg, self.rt, self.device, self.real_batch = cfg, rt, rt.device, real_batch
        self.group = Group()  # one process, until `distribute`
        self.lr = cfg.lr  # the learning rate of the coming step (the Trainer follows train/lr.py)
        # --posthoc-ema: the power-function EMAs whose snapshots make any EMA length afterwards
        # (dtools.posthoc_ema), moved with the sampling EMA; none without the option
        self.tracked: tuple[EMA, ...] = ()

    def distribute(self, group: Group) -> None:
        """Train as one of `group`'s processes: keep `group` (its `shard` of the whole batch's noise
        draws) and call the trained networks through `group.wrap(...)`; real_batch() is already this
        process's slice. A no-op in one process."""
        self.group = group

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """The optimizers whose learning rate follows the run's schedule."""
        raise NotImplementedError

    def set_lr(self, lr: float) -> None:
        self.lr = lr
        for optimizer in self.optimizers():
            for group in optimizer.param_groups:
                group["lr"] = lr

    def train_step(self) -> dict[str, float]:
        """One training step: its named losses and metrics (the window means of metrics.jsonl), or
        NonFiniteLoss before any weight changes."""
        raise NotImplementedError

    def apply_gradients(
        self, optimizer: torch.optim.Optimizer, module: nn.Module, max_norm: float | None,
        also: tuple[torch.optim.Optimizer, ...] = (),
    ) -> float:
        """The end of a step whose loss went backward through `self.scaler`: unscale the gradients, clip
        their norm at `max_norm` (None: measure it only), refuse a non-finite one (in fp16 the scaler
        skips such a step instead), step the optimizer (and those `also` trained by the same loss,
        unclipped) and the scaler, move the EMA of `module`. Returns the gradient norm."""
        self.scaler.unscale_(optimizer)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(module.parameters(),
                                                         max_norm if max_norm is not None else math.inf))
        if not math.isfinite(grad_norm) and self.rt.precision != "fp16":
            raise NonFiniteLoss(f"gradient norm is {grad_norm}")
        for other in also:
            self.scaler.step(other)
        self.scaler.step(optimizer)
        self.scaler.update()
        self.ema.update(module)
        for ema in self.tracked:
            ema.update(module)
        return grad_norm

    def record(self, means: dict[str, float]) -> dict[str, Any]:
        """A metrics.jsonl record's method fields (between "epoch" and "img_per_s") from the window's
        means of `train_step`'s values."""
        return {**means, "lr": self.lr}

    def sample(self, seeds: list[int]) -> torch.Tensor:
        """The sample grid's images (N, C, H, W) in [-1, 1], those of `dtools sample --seed SEED` on the
        checkpoint; the Trainer keeps the training RNG streams out of it."""
        raise NotImplementedError

    def networks(self) -> dict[str, nn.Module]:
        """The networks whose weights must be finite before a save, by how a message names them."""
        raise NotImplementedError

    def checkpoint(self) -> tuple[Weights, dict[str, Any], dict[str, Any]]:
        """(weights, network config, header fields) of the model checkpoint; the Trainer adds step
        and train config."""
        raise NotImplementedError

    def state_parts(self) -> tuple[dict[str, nn.Module], dict[str, tuple[torch.optim.Optimizer, nn.Module]]]:
        """What the training state holds, by prefix: the modules (raw and EMA networks, any other
        trained network) and the optimizers with the module whose parameters each steps."""
        raise NotImplementedError

    def capture(self, stream: BatchStream) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The training state: its tensors (copies) and header fields (state.capture of state_parts,
        the GradScaler and the EMA's update count)."""
        tensors, info = capture(*self.state_parts(), stream, self.scaler)
        return tensors, {"ema_updates": self.ema.num_updates, **info}

    def restore(self, path: Any, tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> BatchStream:
        """Put a training state back; returns the data stream at its position."""
        return restore(path, tensors, info, *self.state_parts(), self.scaler, (self.ema, *self.tracked))

    def snapshots(self) -> list[tuple[float, dict[str, torch.Tensor]]]:
        """(σ_rel, weights) of each tracked power EMA (--posthoc-ema), for RUN/posthoc/."""
        return [(ema.sigma_rel, ema.state_dict()) for ema in self.tracked]

    def tracked_parts(self) -> dict[str, nn.Module]:
        """The tracked EMAs' networks by training-state prefix ("posthoc0.<key>", ...)."""
        return {f"posthoc{i}": ema.module for i, ema in enumerate(self.tracked)}

    def load_weights(self, weights: dict[str, torch.Tensor]) -> str:
        """Start from a model checkpoint's state dict (--init-from): into the network it holds and that
        network's EMA; returns what it leaves fresh ('' when nothing)."""
        raise NotImplementedError

    def describe(self) -> str:
        """What the start-of-run log line says about the model, e.g. 'preset cpu32, 1.11M parameters'."""
        raise NotImplementedError

    def compile(self) -> None:
        """torch.compile the trained networks in place (state-dict keys stay clean)."""

    @property
    def losses(self) -> tuple[str, ...]:
        """The step values shown on the bar, in the log lines and the summary (its spec's)."""
        return MODEL_TYPES[self.model_type].losses

    @property
    def images_per_step(self) -> int:
        return self.cfg.images_per_step()


def parameters(**modules: nn.Module) -> str:
    """'generator 1.07M + discriminator 0.66M parameters'."""
    sizes = (f"{name} {count_parameters(m) / 1e6:.2f}M" for name, m in modules.items())
    return " + ".join(sizes) + " parameters"


@dataclass
class Window:
    """Running sums of a step's named values over the current --log-every window of steps."""

    sums: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    start: float = field(default_factory=time.perf_counter)
    last_rate: float = 0.0  # img/s of the previous window

    def add(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.steps += 1

    def means(self) -> dict[str, float]:
        return {k: v / self.steps for k, v in self.sums.items()}

    def rate(self, images_per_step: int) -> float:
        """img/s in this window so far (the previous window's when this one is empty)."""
        if not self.steps:
            return self.last_rate
        return self.steps * images_per_step / max(time.perf_counter() - self.start, 1e-9)

    def reset(self, rate: float) -> None:
        self.sums, self.steps = {}, 0
        self.start, self.last_rate = time.perf_counter(), rate
