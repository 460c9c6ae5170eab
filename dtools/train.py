"""The training loop of `dtools train`: a DDPM noise predictor trained as the seed report describes.

One step (Ho et al. 2020, Algorithm 1): take a batch x0 of images in [-1, 1] (randomly flipped),
draw t ~ U{0..T-1} and ε ~ N(0, I), form x_t = sqrt(ᾱ_t) x0 + sqrt(1-ᾱ_t) ε, and regress the network
output on the target of the parameterization (ε, x0 or v) with a per-sample weighted MSE (plain by
default, Min-SNR-γ optionally). Adam updates the weights; an EMA of them is what `sample` uses.

A run folder RUN holds (all written atomically, every --save-every steps and at the end):
  model.safetensors        EMA weights + raw weights ("raw." prefix) + JSON header (dtools.checkpoint)
  train-state.safetensors  everything --resume needs to continue bit for bit (dtools.trainstate)
  metrics.jsonl            one JSON line per --log-every steps: step, loss, lr, grad_norm, img_per_s, elapsed
  loss.png                 the loss curve (raw and smoothed, log scale)
  samples/step_XXXXXX.png  grids of EMA samples (dpm++2m, 20 steps, fixed seeds) every --sample-every steps
  config.json              the resolved configuration
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dtools.checkpoint import save_model
from dtools.dataset import BatchStream, augment, fingerprint, load_images
from dtools.diffusion import PARAMETERIZATIONS, Schedule, loss_weight, q_sample, training_target
from dtools.ema import EMA
from dtools.errors import DtoolsError
from dtools.fileio import atomic_write_bytes
from dtools.runtime import autocast, resolve_device, resolve_precision
from dtools.unet import PRESETS, UNet, UNetConfig, preset_config, preset_for_size

MODEL_FILE = "model.safetensors"
STATE_FILE = "train-state.safetensors"
METRICS_FILE = "metrics.jsonl"
LOSS_PLOT = "loss.png"
CONFIG_FILE = "config.json"
SAMPLES_DIR = "samples"
SAMPLE_SAMPLER, SAMPLE_STEPS = "dpm++2m", 20


# ---------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class TrainPreset:
    """Training defaults that come with a model preset (any of them can be overridden)."""

    lr: float
    batch_size: int
    ema_warmup: bool
    max_steps: int
    save_every: int
    sample_every: int
    grad_clip: float | None


# seed64 is the seed report's recipe. The CPU presets' numbers were chosen by short measured runs on
# a 2-core CPU (docs/train.md, "How the CPU presets were chosen").
TRAIN_PRESETS: dict[str, TrainPreset] = {
    "seed64": TrainPreset(lr=1e-4, batch_size=128, ema_warmup=False, max_steps=25_000, save_every=1000,
                          sample_every=1000, grad_clip=None),
    "cpu32": TrainPreset(lr=1e-3, batch_size=16, ema_warmup=True, max_steps=2000, save_every=250,
                         sample_every=500, grad_clip=1.0),
    "cpu16": TrainPreset(lr=1e-3, batch_size=16, ema_warmup=True, max_steps=2000, save_every=250,
                         sample_every=500, grad_clip=1.0),
}
assert set(TRAIN_PRESETS) == set(PRESETS)

# The U-Net options a user may set on top of a preset (CLI flag names in commands/train.py).
MODEL_OPTIONS = (
    "base_channels", "channel_mult", "num_res_blocks", "attention_resolutions", "num_heads", "dropout",
)

# Options that may change when a run is resumed; the rest would break the run's continuity.
RESUMABLE = frozenset({
    "max_steps", "epochs", "max_minutes", "save_every", "sample_every", "sample_count", "log_every",
    "precision", "device", "compile",
})


@dataclass
class TrainConfig:
    """The resolved training configuration: one field per `dtools train` option, plus the data facts."""

    data: str
    out: str
    beta: str  # what --beta named: a .npy file or a schedule name (the exact betas go into checkpoints)
    T: int
    image_size: int
    channels: int
    num_images: int
    preset: str
    model: dict[str, Any]  # the resolved UNetConfig (asdict)
    parameterization: str = "eps"
    lr: float = 1e-4
    batch_size: int = 128
    grad_accum: int = 1
    ema_decay: float = 0.999
    ema_warmup: bool = False
    min_snr_gamma: float | None = None
    grad_clip: float | None = None
    flip: bool = True
    max_steps: int | None = None
    epochs: float | None = None
    max_minutes: float | None = None
    seed: int = 0
    save_every: int = 1000
    sample_every: int = 1000
    sample_count: int = 16
    log_every: int = 10
    precision: str = "auto"
    device: str = "auto"
    compile: bool | None = None  # None: on for CUDA, off for the CPU (measured, docs/train.md)
    data_fingerprint: str = ""

    def __post_init__(self) -> None:
        if self.grad_clip == 0:
            self.grad_clip = None  # --grad-clip 0 turns clipping off

    def total_steps(self) -> int:
        """Where the run stops: --max-steps, or --epochs worth of batches, whichever comes first."""
        limits = [self.max_steps] if self.max_steps is not None else []
        if self.epochs is not None:
            limits.append(math.ceil(self.epochs * self.num_images / self.batch_size))
        return min(limits)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in d.items() if k in known})
        except TypeError as e:
            raise DtoolsError(f"training config is incomplete ({e})") from None

    def validate(self, betas: np.ndarray) -> TrainConfig:
        for name in ("lr", "batch_size", "grad_accum", "save_every", "sample_count", "log_every"):
            v = getattr(self, name)
            if not v > 0:
                raise DtoolsError(f"--{name.replace('_', '-')} must be positive, got {v}")
        if self.batch_size % self.grad_accum:
            raise DtoolsError(
                f"--batch {self.batch_size} does not split into --grad-accum {self.grad_accum} equal parts"
            )
        if not 0 <= self.ema_decay < 1:
            raise DtoolsError(f"--ema must lie in [0, 1), got {self.ema_decay}")
        for name in ("min_snr_gamma", "grad_clip", "epochs", "max_minutes", "max_steps"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise DtoolsError(f"--{name.replace('_', '-')} must be positive, got {v}")
        if self.sample_every < 0:
            raise DtoolsError(f"--sample-every must be 0 (off) or positive, got {self.sample_every}")
        if self.max_steps is None and self.epochs is None:
            raise DtoolsError("give --max-steps or --epochs")
        if self.parameterization not in PARAMETERIZATIONS:
            choices = ", ".join(PARAMETERIZATIONS)
            raise DtoolsError(f"unknown --param {self.parameterization!r}; choose one of {choices}")
        check_parameterization(betas, self.parameterization)
        UNetConfig.from_dict(self.model)
        return self


def check_parameterization(betas: np.ndarray, parameterization: str) -> None:
    """ε-prediction cannot work when ᾱ_T = 0: x_T is pure noise, so predicting ε says nothing about x0."""
    if parameterization == "eps" and np.prod(1.0 - np.asarray(betas, dtype=np.float64)) == 0.0:
        raise DtoolsError(
            "the schedule has zero terminal SNR (ᾱ_T = 0), where an ε-prediction cannot recover x0; "
            "train with --param v (or x0)"
        )


def new_config(
    data: str, out: str, beta: str, betas: np.ndarray, shape: tuple[int, int, int, int],
    options: dict[str, Any],
) -> TrainConfig:
    """Resolve a new run's configuration: the preset for the image size, then the user's options.

    `shape` is the data's (N, H, W, C); `options` maps TrainConfig field names (and MODEL_OPTIONS) to
    the values given on the command line, None where the user gave none.
    """
    n, h, w, c = shape
    if h != w:
        raise DtoolsError(f"{data}: images are {w}x{h}; the U-Net needs square images (dtools prep --size N)")
    opts = {k: v for k, v in options.items() if v is not None}
    preset = opts.pop("preset", "auto")
    name = preset_for_size(h) if preset == "auto" else preset
    if name not in PRESETS:
        raise DtoolsError(f"unknown --preset {preset!r}; choose auto or one of {', '.join(PRESETS)}")
    model = preset_config(name, h, c).to_dict()
    for key in MODEL_OPTIONS:
        if key in opts:
            value = opts.pop(key)
            model[key] = list(value) if key in ("channel_mult", "attention_resolutions") else value
    tp = TRAIN_PRESETS[name]
    defaults = {
        "lr": tp.lr, "batch_size": tp.batch_size, "ema_warmup": tp.ema_warmup, "save_every": tp.save_every,
        "sample_every": tp.sample_every, "grad_clip": tp.grad_clip,
    }
    if "max_steps" not in opts and "epochs" not in opts:
        defaults["max_steps"] = tp.max_steps
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(opts) - known
    assert not unknown, unknown
    cfg = TrainConfig(
        data=str(data), out=str(out), beta=str(beta), T=int(betas.shape[0]), image_size=h, channels=c,
        num_images=n, preset=name, model=UNetConfig.from_dict(model).to_dict(), **{**defaults, **opts},
    )
    return cfg.validate(betas)


def resume_config(saved: dict[str, Any], betas: np.ndarray, options: dict[str, Any]) -> TrainConfig:
    """A resumed run's configuration: the saved one, with the few options that may change (RESUMABLE)."""
    try:
        return _resume_config(saved, betas, options)
    except (TypeError, ValueError, AttributeError) as e:  # a hand-edited or damaged header
        raise DtoolsError(f"the saved training config is damaged ({e})") from None


def _resume_config(saved: dict[str, Any], betas: np.ndarray, options: dict[str, Any]) -> TrainConfig:
    cfg = TrainConfig.from_dict(saved)
    for key, value in options.items():
        if value is None:
            continue
        if key in RESUMABLE:
            setattr(cfg, key, value)
        elif key in ("data", "out"):
            continue
        elif key in MODEL_OPTIONS or key == "preset" or getattr(cfg, key) != value:
            flag = {"batch_size": "batch", "parameterization": "param", "ema_decay": "ema"}.get(key, key)
            raise DtoolsError(
                f"--{flag.replace('_', '-')} cannot change when resuming a run; "
                "drop it, or start a new run (another -o, or --force)"
            )
    return cfg.validate(betas)


def default_compile(device: torch.device) -> bool:
    """torch.compile pays off on a GPU; on a 2-core CPU its minute of compiling does not (docs/train.md)."""
    return device.type == "cuda"


def schedule_on(schedule: Schedule, device: torch.device) -> Schedule:
    """The schedule's tables on the training device (MPS has no float64: there they become float32)."""
    if device.type == "mps":
        return Schedule(*(getattr(schedule, f).float().to(device) for f in schedule.__dataclass_fields__))
    return schedule.to(device)


def resolved_runtime(cfg: TrainConfig) -> dict[str, Any]:
    device = resolve_device(cfg.device)
    return {
        "device": str(device),
        "precision": resolve_precision(cfg.precision, device),
        "compile": default_compile(device) if cfg.compile is None else cfg.compile,
        "total_steps": cfg.total_steps(),
        "micro_batch": cfg.batch_size // cfg.grad_accum,
    }


# ---------------------------------------------------------------------------------------------
# The run folder


def resumable_state(run: Path) -> Path:
    """RUN's training state file, or a clear error when there is nothing to resume."""
    if not (run / STATE_FILE).is_file():
        raise DtoolsError(f"{run}: nothing to resume (no {STATE_FILE}); start a new run without --resume")
    return run / STATE_FILE


def prepare_run_dir(run: Path, resume: bool, force: bool) -> None:
    if run.exists() and not run.is_dir():
        raise DtoolsError(f"{run} exists and is not a folder; -o names the run folder")
    if resume:
        resumable_state(run)
        return
    if run.exists() and any(run.iterdir()):
        if not force:
            raise DtoolsError(
                f"{run} already exists and is not empty; pass --resume to continue its run, or --force to "
                "start over"
            )
        for name in (MODEL_FILE, STATE_FILE, METRICS_FILE, LOSS_PLOT, CONFIG_FILE):
            (run / name).unlink(missing_ok=True)
        for p in (run / SAMPLES_DIR).glob("step_*.png"):
            p.unlink()
    run.mkdir(parents=True, exist_ok=True)


def read_metrics(path: Path, up_to_step: int) -> list[dict[str, Any]]:
    """The records of an earlier session up to its last checkpoint (a torn last line is skipped)."""
    records = []
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= up_to_step:
                records.append(rec)
    return records


def write_metrics(path: Path, records: list[dict[str, Any]]) -> None:
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in records).encode(), force=True)


def append_metric(path: Path, record: dict[str, Any]) -> None:
    # Live log for `tail -f`; the file is rewritten atomically at every checkpoint.
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


# ---------------------------------------------------------------------------------------------
# The loop


class NonFiniteLoss(Exception):
    pass


@dataclass
class TrainResult:
    step: int
    total_steps: int
    stopped: str  # "done", "max_minutes" or "interrupted"
    loss: float | None  # mean of the last --log-every window
    elapsed: float
    run: Path
    checkpoint_step: int
    metrics: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Window:
    """Running sums over the current --log-every window of steps."""

    loss: float = 0.0
    grad_norm: float = 0.0
    steps: int = 0
    start: float = field(default_factory=time.perf_counter)
    last_rate: float = 0.0  # img/s of the previous window

    def add(self, loss: float, grad_norm: float) -> None:
        self.loss, self.grad_norm, self.steps = self.loss + loss, self.grad_norm + grad_norm, self.steps + 1

    def rate(self, batch_size: int) -> float:
        """img/s in this window so far (the previous window's when this one is empty)."""
        if not self.steps:
            return self.last_rate
        return self.steps * batch_size / max(time.perf_counter() - self.start, 1e-9)

    def reset(self, rate: float) -> None:
        self.loss, self.grad_norm, self.steps = 0.0, 0.0, 0
        self.start, self.last_rate = time.perf_counter(), rate


class _StopSignals:
    """SIGINT/SIGTERM set a flag, so the loop stops at the next step boundary with a checkpoint.

    A second Ctrl-C raises KeyboardInterrupt at once. Only installed from the main thread.
    """

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _fmt_time(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Trainer:
    """One training session of a run: built from a config (and, with `resume`, the run's state),
    then `run()` steps until --max-steps / --epochs, --max-minutes or a stop signal."""

    def __init__(
        self, cfg: TrainConfig, betas: np.ndarray, *, resume: bool = False, force: bool = False,
        log: Callable[[str], None] = _log, progress: bool | None = None,
    ):
        betas = np.asarray(betas, dtype=np.float64)
        self.cfg, self.log = cfg.validate(betas), log
        self.run_dir = Path(cfg.out)
        prepare_run_dir(self.run_dir, resume, force)
        state = None
        if resume:
            from dtools.trainstate import load_state

            state = load_state(self.run_dir / STATE_FILE)  # check the file before spending time on data

        # Device and precision
        self.device = resolve_device(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        self.use_compile = default_compile(self.device) if cfg.compile is None else cfg.compile
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

        # Data: decoded once, kept as uint8 (N, C, H, W) on the CPU
        self.images = load_images(cfg.data)
        n, c, h, w = self.images.shape
        if (c, h) != (cfg.channels, cfg.image_size):
            raise DtoolsError(
                f"{cfg.data}: images are {h}x{w}x{c}, but the run was set up for "
                f"{cfg.image_size}x{cfg.image_size}x{cfg.channels}"
            )
        fp = fingerprint(self.images)
        if resume and cfg.data_fingerprint and fp != cfg.data_fingerprint:
            raise DtoolsError(f"{cfg.data}: these are not the images the run in {cfg.out} was trained on")
        cfg.num_images, cfg.data_fingerprint = n, fp

        self.schedule_cpu = Schedule.from_betas(betas)  # float64; what the samplers get
        self.schedule = schedule_on(self.schedule_cpu, self.device)

        # Model, EMA, optimizer (seeded, so a run is reproducible)
        torch.manual_seed(cfg.seed)
        self.model = UNet(UNetConfig.from_dict(cfg.model)).to(self.device)
        self.ema = EMA(self.model, cfg.ema_decay, cfg.ema_warmup)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.stream = BatchStream(n, cfg.seed)
        self.step, self.elapsed_before, self.metrics = 0, 0.0, []
        self.checkpoint_step = -1  # the step of the last checkpoint on disk (-1: none yet)
        if state is not None:
            from dtools.trainstate import restore

            tensors, info = state
            self.stream = restore(
                self.run_dir / STATE_FILE, tensors, info, self.model, self.ema, self.optimizer, self.scaler
            )
            if self.stream.n != n:
                raise DtoolsError(f"{cfg.data}: holds {n} images, but the run was trained on {self.stream.n}")
            self.step, self.elapsed_before = int(info["step"]), float(info.get("elapsed", 0.0))
            self.checkpoint_step = self.step
            self.metrics = read_metrics(self.run_dir / METRICS_FILE, self.step)
            write_metrics(self.run_dir / METRICS_FILE, self.metrics)  # drop lines logged after the checkpoint
        if self.use_compile:
            self.model.compile()

        self.total = cfg.total_steps()
        self.header = {
            "model": cfg.model, "parameterization": cfg.parameterization, "betas": [float(b) for b in betas],
            "ema_decay": cfg.ema_decay, "image_size": cfg.image_size, "channels": cfg.channels,
        }
        resolved = {"device": str(self.device), "precision": self.precision, "compile": self.use_compile,
                    "total_steps": self.total}
        config_json = json.dumps({**cfg.to_dict(), "resolved": resolved}, indent=2) + "\n"
        atomic_write_bytes(self.run_dir / CONFIG_FILE, config_json.encode(), force=True)
        self.show_bar = sys.stderr.isatty() if progress is None else progress
        self.session_start = time.monotonic()

    def elapsed(self) -> float:
        """Seconds of training over all sessions of the run."""
        return self.elapsed_before + time.monotonic() - self.session_start

    def draw_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A whole batch's images, timesteps and noise, drawn in one fixed order (so --grad-accum
        splits exactly the batch that an unsplit step would see)."""
        cfg, device = self.cfg, self.device
        idx = self.stream.next(cfg.batch_size)
        x0 = augment(self.images[idx], cfg.flip).to(device, non_blocking=True)
        x0 = x0.float() / 127.5 - 1.0  # (B, C, H, W) in [-1, 1]
        t = torch.randint(0, self.schedule.T, (cfg.batch_size,), device=device)  # (B,)
        eps = torch.randn(x0.shape, device=device)  # (B, C, H, W)
        return x0, t, eps

    def train_step(self) -> tuple[float, float]:
        """One optimizer step; returns (loss, gradient norm) or raises NonFiniteLoss before updating."""
        cfg, s, param = self.cfg, self.schedule, self.cfg.parameterization
        micro = cfg.batch_size // cfg.grad_accum
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        total_loss = torch.zeros((), device=self.device)
        x0_all, t_all, eps_all = self.draw_batch()
        for x0, t, eps in zip(x0_all.split(micro), t_all.split(micro), eps_all.split(micro), strict=True):
            x_t = q_sample(s, x0, t, eps)
            target = training_target(s, param, x0, eps, t)
            with autocast(self.device, self.precision):
                out = self.model(x_t, t)
            per_sample = (out.float() - target).pow(2).mean(dim=(1, 2, 3))  # (b,)
            # the mean over the whole batch, accumulated one micro-batch at a time
            loss = (loss_weight(s, param, t, cfg.min_snr_gamma) * per_sample).sum() / cfg.batch_size
            self.scaler.scale(loss).backward()
            total_loss += loss.detach()
        loss_value = float(total_loss)
        if not math.isfinite(loss_value):
            raise NonFiniteLoss(f"loss is {loss_value}")
        self.scaler.unscale_(self.optimizer)
        max_norm = cfg.grad_clip if cfg.grad_clip is not None else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
        if not math.isfinite(grad_norm) and self.precision != "fp16":  # fp16: the scaler skips such steps
            raise NonFiniteLoss(f"gradient norm is {grad_norm}")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.ema.update(self.model)
        return loss_value, grad_norm

    def write_samples(self) -> None:
        """samples/step_XXXXXX.png: EMA samples of fixed seeds (those of `dtools sample --seed SEED`)."""
        from dtools.grid import make_grid
        from dtools.images import save_png, to_uint8
        from dtools.samplers import generate, image_seed

        cfg, device = self.cfg, self.device

        def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            with autocast(device, self.precision):
                return self.ema.module(x_t, t).float()

        seeds = [image_seed(cfg.seed, i) for i in range(cfg.sample_count)]
        shape = (cfg.channels, cfg.image_size, cfg.image_size)
        # sampling must not disturb the training RNG streams (exact resume)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            x = generate(model_fn, self.schedule_cpu, cfg.parameterization, shape, seeds,
                         sampler=SAMPLE_SAMPLER, steps=SAMPLE_STEPS, device=device)
        nrow = math.ceil(math.sqrt(cfg.sample_count))
        grid = make_grid(to_uint8(x), nrow=nrow, scale=max(1, 64 // cfg.image_size))
        save_png(grid, self.run_dir / SAMPLES_DIR / f"step_{self.step:06d}.png", force=True)

    def save_checkpoint(self) -> None:
        """model.safetensors, metrics.jsonl, loss.png, then train-state.safetensors (the commit point)."""
        from dtools.plots import loss_curve
        from dtools.trainstate import capture, save_state

        for name, module in (("weights", self.model), ("EMA weights", self.ema.module)):
            if not all(bool(torch.isfinite(p).all()) for p in module.parameters()):
                raise NonFiniteLoss(f"the {name} are not finite")
        tensors, info = capture(self.model, self.ema, self.optimizer, self.stream, self.scaler)
        meta = {**self.header, "step": self.step, "train": self.cfg.to_dict()}
        weights = {"ema": self.ema.state_dict(), "raw": self.model.state_dict()}
        save_model(self.run_dir / MODEL_FILE, weights, config=self.cfg.model, meta=meta, force=True)
        write_metrics(self.run_dir / METRICS_FILE, self.metrics)
        if self.metrics:
            steps, losses = [r["step"] for r in self.metrics], [r["loss"] for r in self.metrics]
            loss_curve(steps, losses, self.run_dir / LOSS_PLOT, force=True)
        # The state goes last: it is what --resume trusts, and it only moves once the rest is on disk.
        save_state(self.run_dir / STATE_FILE, tensors, {**meta, **info, "elapsed": self.elapsed()})
        self.checkpoint_step = self.step

    def _progress_bar(self):
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        return Progress(
            TextColumn("step {task.completed}/{task.total}"), BarColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[ips]} img/s"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=Console(stderr=True), disable=not self.show_bar, transient=False,
        )

    def run(self) -> TrainResult:
        cfg, total = self.cfg, self.total
        n_params = sum(p.numel() for p in self.model.parameters())
        self.log(f"training {self.run_dir}: {cfg.num_images} images {cfg.image_size}x{cfg.image_size}x"
                 f"{cfg.channels}, preset {cfg.preset}, {n_params / 1e6:.2f}M parameters, {self.device} "
                 f"{self.precision}{' compiled' if self.use_compile else ''}, steps {self.step}->{total}")
        window, stopped = _Window(), "done"
        budget = cfg.max_minutes * 60 if cfg.max_minutes is not None else math.inf
        bar = self._progress_bar()
        try:
            with _StopSignals() as signals, bar:
                task = bar.add_task("train", total=total, completed=self.step, loss="-", ips="-")
                while self.step < total and stopped == "done":
                    try:
                        window.add(*self.train_step())
                    except NonFiniteLoss as e:
                        raise self._diverged(str(e), self.step + 1) from None
                    self.step += 1
                    if self.step % cfg.log_every == 0 or self.step == total:
                        rec = self._log_window(window)
                        bar.update(task, loss=f"{rec['loss']:.4f}", ips=f"{rec['img_per_s']:.0f}")
                    bar.update(task, completed=self.step)
                    if signals.requested:
                        stopped = "interrupted"
                    elif time.monotonic() - self.session_start >= budget and self.step < total:
                        stopped = "max_minutes"
                    self._write_outputs(end=self.step == total or stopped != "done",
                                        samples=stopped != "interrupted", window=window)
        except NonFiniteLoss as e:
            raise self._diverged(str(e), self.step) from None
        return TrainResult(self.step, total, stopped, self.last_loss(), self.elapsed(), self.run_dir,
                           self.checkpoint_step, self.metrics)

    def _write_outputs(self, end: bool, samples: bool, window: _Window) -> None:
        """Sample grid and checkpoint when they are due (and always at the end)."""
        cfg = self.cfg
        if samples and cfg.sample_every and (self.step % cfg.sample_every == 0 or end):
            self.write_samples()
        if self.step % cfg.save_every == 0 or end:
            self.save_checkpoint()
            if not self.show_bar:
                loss = self.last_loss()
                self.log(f"step {self.step}/{self.total}  loss {'-' if loss is None else f'{loss:.4g}'}  "
                         f"{window.rate(cfg.batch_size):.0f} img/s  elapsed {_fmt_time(self.elapsed())}  "
                         f"saved {self.run_dir / MODEL_FILE}")

    def _diverged(self, what: str, step: int) -> DtoolsError:
        kept = (f"the last good checkpoint (step {self.checkpoint_step}) in {self.run_dir} is intact"
                if self.checkpoint_step >= 0 else "no checkpoint had been written yet")
        hint = "lower --lr" + ("" if self.cfg.grad_clip else " or set --grad-clip 1")
        return DtoolsError(f"training diverged at step {step}: {what}; stopped, {kept}; try a {hint}")

    def _log_window(self, window: _Window) -> dict[str, Any]:
        """Close a --log-every window: one metrics record, kept in memory and appended to metrics.jsonl."""
        rec = {"step": self.step, "epoch": self.stream.epoch, "loss": window.loss / window.steps,
               "lr": self.cfg.lr, "grad_norm": window.grad_norm / window.steps,
               "img_per_s": round(window.rate(self.cfg.batch_size), 2), "elapsed": round(self.elapsed(), 3)}
        self.metrics.append(rec)
        append_metric(self.run_dir / METRICS_FILE, rec)
        window.reset(rec["img_per_s"])
        return rec

    def last_loss(self) -> float | None:
        """The mean loss of the last logged window."""
        return self.metrics[-1]["loss"] if self.metrics else None


def train(
    cfg: TrainConfig, betas: np.ndarray, *, resume: bool = False, force: bool = False,
    log: Callable[[str], None] = _log, progress: bool | None = None,
) -> TrainResult:
    """Train (or, with `resume`, continue) the run described by `cfg` with schedule `betas`.

    Raises DtoolsError for anything the user can fix, including a non-finite loss (after which
    the last checkpoint on disk is untouched). `progress` forces the rich bar on or off (default:
    on when stderr is a terminal).
    """
    return Trainer(cfg, betas, resume=resume, force=force, log=log, progress=progress).run()
