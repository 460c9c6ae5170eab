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
    loss: float | None
    elapsed: float
    run: Path
    checkpoint_step: int
    metrics: list[dict[str, Any]] = field(default_factory=list)


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


def train(
    cfg: TrainConfig, betas: np.ndarray, *, resume: bool = False, force: bool = False,
    log: Callable[[str], None] = _log, progress: bool | None = None,
) -> TrainResult:
    """Train (or, with `resume`, continue) the run described by `cfg` with schedule `betas`.

    Raises DtoolsError for anything the user can fix, including a non-finite loss (after which
    the last checkpoint on disk is untouched). `progress` forces the rich bar on or off (default:
    on when stderr is a terminal).
    """
    betas = np.asarray(betas, dtype=np.float64)
    cfg.validate(betas)
    run = Path(cfg.out)
    prepare_run_dir(run, resume, force)
    state_path = run / STATE_FILE
    state = None
    if resume:
        from dtools.trainstate import load_state

        state = load_state(state_path)  # check the file before spending time on data

    # Device and precision
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    use_compile = default_compile(device) if cfg.compile is None else cfg.compile
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # Data: decoded once, kept as uint8 (N, C, H, W) on the CPU
    images = load_images(cfg.data)
    n, c, h, w = images.shape
    if (c, h) != (cfg.channels, cfg.image_size):
        raise DtoolsError(
            f"{cfg.data}: images are {h}x{w}x{c}, but the run was set up for "
            f"{cfg.image_size}x{cfg.image_size}x{cfg.channels}"
        )
    fp = fingerprint(images)
    if resume and cfg.data_fingerprint and fp != cfg.data_fingerprint:
        raise DtoolsError(f"{cfg.data}: these images differ from the ones the run in {run} was trained on")
    cfg.num_images, cfg.data_fingerprint = n, fp

    schedule_cpu = Schedule.from_betas(betas)  # float64; what the samplers get
    schedule = schedule_on(schedule_cpu, device)
    T, param = schedule.T, cfg.parameterization

    # Model, EMA, optimizer (seeded, so a run is reproducible)
    torch.manual_seed(cfg.seed)
    model = UNet(UNetConfig.from_dict(cfg.model)).to(device)
    ema = EMA(model, cfg.ema_decay, cfg.ema_warmup)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    stream = BatchStream(n, cfg.seed)
    step, elapsed_before, metrics = 0, 0.0, []
    if state is not None:
        from dtools.trainstate import restore

        tensors, info = state
        stream = restore(state_path, tensors, info, model, ema, optimizer, scaler)
        if stream.n != n:
            raise DtoolsError(f"{cfg.data}: holds {n} images, but the run was trained on {stream.n}")
        step, elapsed_before = int(info["step"]), float(info.get("elapsed", 0.0))
        metrics = read_metrics(run / METRICS_FILE, step)
        write_metrics(run / METRICS_FILE, metrics)  # drop lines logged after the checkpoint
        del tensors, state
    if use_compile:
        model.compile()

    total = cfg.total_steps()
    header = {
        "model": cfg.model, "parameterization": param, "betas": [float(b) for b in betas],
        "weights": ["ema", "raw"], "ema_decay": cfg.ema_decay, "image_size": cfg.image_size,
        "channels": cfg.channels, "train": cfg.to_dict(),
    }
    atomic_write_bytes(run / CONFIG_FILE, (json.dumps(
        {**cfg.to_dict(), "resolved": {"device": str(device), "precision": precision, "compile": use_compile,
                                       "total_steps": total}}, indent=2) + "\n").encode(), force=True)
    micro = cfg.batch_size // cfg.grad_accum
    session_start = time.monotonic()
    checkpoint_step = step if resume else -1

    def elapsed() -> float:
        return elapsed_before + time.monotonic() - session_start

    def draw_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A whole batch's images, timesteps and noise, drawn in one fixed order (so --grad-accum
        splits exactly the batch that an unsplit step would see)."""
        idx = stream.next(cfg.batch_size)
        x0 = augment(images[idx], cfg.flip).to(device, non_blocking=True).float() / 127.5 - 1.0  # (B,C,H,W)
        t = torch.randint(0, T, (cfg.batch_size,), device=device)  # (B,)
        eps = torch.randn(x0.shape, device=device)  # (B, C, H, W)
        return x0, t, eps

    def train_step() -> tuple[float, float]:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        total_loss = torch.zeros((), device=device)
        x0_all, t_all, eps_all = draw_batch()
        for x0, t, eps in zip(x0_all.split(micro), t_all.split(micro), eps_all.split(micro), strict=True):
            x_t = q_sample(schedule, x0, t, eps)
            target = training_target(schedule, param, x0, eps, t)
            with autocast(device, precision):
                out = model(x_t, t)
            per_sample = (out.float() - target).pow(2).mean(dim=(1, 2, 3))  # (b,)
            # the mean over the whole batch, accumulated one micro-batch at a time
            loss = (loss_weight(schedule, param, t, cfg.min_snr_gamma) * per_sample).sum() / cfg.batch_size
            scaler.scale(loss).backward()
            total_loss += loss.detach()
        loss_value = float(total_loss)
        if not math.isfinite(loss_value):
            raise NonFiniteLoss(f"loss is {loss_value}")
        scaler.unscale_(optimizer)
        max_norm = cfg.grad_clip if cfg.grad_clip is not None else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
        if not math.isfinite(grad_norm) and precision != "fp16":  # fp16: the scaler skips such steps
            raise NonFiniteLoss(f"gradient norm is {grad_norm}")
        scaler.step(optimizer)
        scaler.update()
        ema.update(model)
        return loss_value, grad_norm

    def write_samples() -> None:
        from dtools.grid import make_grid
        from dtools.images import save_png, to_uint8
        from dtools.samplers import generate, image_seed

        def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            with autocast(device, precision):
                return ema.module(x_t, t).float()

        seeds = [image_seed(cfg.seed, i) for i in range(cfg.sample_count)]
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            x = generate(model_fn, schedule_cpu, param, (cfg.channels, cfg.image_size, cfg.image_size), seeds,
                         sampler=SAMPLE_SAMPLER, steps=SAMPLE_STEPS, device=device)
        nrow = math.ceil(math.sqrt(cfg.sample_count))
        grid = make_grid(to_uint8(x), nrow=nrow, scale=max(1, 64 // cfg.image_size))
        save_png(grid, run / SAMPLES_DIR / f"step_{step:06d}.png", force=True)

    def save_checkpoint() -> None:
        nonlocal checkpoint_step
        from dtools.plots import loss_curve
        from dtools.trainstate import capture, save_state

        for name, module in (("weights", model), ("EMA weights", ema.module)):
            if not all(bool(torch.isfinite(p).all()) for p in module.parameters()):
                raise NonFiniteLoss(f"the {name} are not finite")
        tensors, info = capture(model, ema, optimizer, stream, scaler)
        meta = {**header, "step": step, "train": cfg.to_dict()}
        weights = {**ema.state_dict(), **{f"raw.{k}": v for k, v in model.state_dict().items()}}
        save_model(run / MODEL_FILE, weights, meta, force=True)
        write_metrics(run / METRICS_FILE, metrics)
        if metrics:
            steps, losses = [r["step"] for r in metrics], [r["loss"] for r in metrics]
            loss_curve(steps, losses, run / LOSS_PLOT, force=True)
        # The state goes last: it is what --resume trusts, and it only moves once the rest is on disk.
        save_state(state_path, tensors, {**meta, **info, "elapsed": elapsed()})
        checkpoint_step = step

    # Logging accumulators over the current --log-every window
    win_loss, win_norm, win_steps, win_start = 0.0, 0.0, 0, time.perf_counter()
    last_loss: float | None = None
    ips = 0.0
    stopped = "done"
    show_bar = sys.stderr.isatty() if progress is None else progress
    log(f"training {run}: {n} images {cfg.image_size}x{cfg.image_size}x{cfg.channels}, preset {cfg.preset}, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {device} {precision}"
        f"{' compiled' if use_compile else ''}, steps {step}->{total}")

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("step {task.completed}/{task.total}"), BarColumn(), TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[ips]} img/s"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=Console(stderr=True), disable=not show_bar, transient=False,
    )
    try:
        with _StopSignals() as signals, bar:
            task = bar.add_task("train", total=total, completed=step, loss="-", ips="-")
            while step < total:
                try:
                    loss_value, grad_norm = train_step()
                except NonFiniteLoss as e:
                    raise _diverged(str(e), step + 1, checkpoint_step, run, cfg) from None
                step += 1
                last_loss = loss_value
                win_loss, win_norm, win_steps = win_loss + loss_value, win_norm + grad_norm, win_steps + 1
                if step % cfg.log_every == 0 or step == total:
                    now = time.perf_counter()
                    ips = win_steps * cfg.batch_size / max(now - win_start, 1e-9)
                    rec = {"step": step, "epoch": stream.epoch, "loss": win_loss / win_steps, "lr": cfg.lr,
                           "grad_norm": win_norm / win_steps, "img_per_s": round(ips, 2),
                           "elapsed": round(elapsed(), 3)}
                    metrics.append(rec)
                    append_metric(run / METRICS_FILE, rec)
                    win_loss, win_norm, win_steps, win_start = 0.0, 0.0, 0, now
                    bar.update(task, loss=f"{rec['loss']:.4f}", ips=f"{ips:.0f}")
                bar.update(task, completed=step)
                budget = cfg.max_minutes * 60 if cfg.max_minutes is not None else math.inf
                out_of_time = time.monotonic() - session_start >= budget
                if signals.requested:
                    stopped = "interrupted"
                elif out_of_time and step < total:
                    stopped = "max_minutes"
                end = step == total or stopped != "done"
                if cfg.sample_every and (step % cfg.sample_every == 0 or end) and stopped != "interrupted":
                    write_samples()
                if step % cfg.save_every == 0 or end:
                    save_checkpoint()
                    if not show_bar:
                        if win_steps:  # a checkpoint between two log lines: the rate so far in this window
                            ips = win_steps * cfg.batch_size / max(time.perf_counter() - win_start, 1e-9)
                        log(f"step {step}/{total}  loss {metrics[-1]['loss'] if metrics else last_loss:.4g}  "
                            f"{ips:.0f} img/s  elapsed {_fmt_time(elapsed())}  saved {run / MODEL_FILE}")
                if end:
                    break
    except NonFiniteLoss as e:
        raise _diverged(str(e), step, checkpoint_step, run, cfg) from None
    return TrainResult(step, total, stopped, last_loss, elapsed(), run, checkpoint_step, metrics)


def _diverged(what: str, step: int, checkpoint_step: int, run: Path, cfg: TrainConfig) -> DtoolsError:
    kept = (f"the last good checkpoint (step {checkpoint_step}) in {run} is intact" if checkpoint_step >= 0
            else "no checkpoint had been written yet")
    hint = "lower --lr" + ("" if cfg.grad_clip else " or set --grad-clip 1")
    return DtoolsError(f"training diverged at step {step}: {what}; stopped, {kept}; try a {hint}")
