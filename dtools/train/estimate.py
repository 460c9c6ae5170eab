"""How long a run will take, said before it is too late to change it.

`StepClock` times a session's steps: the first pays for warm-up (allocations, caches), so the pace is
measured over the steps after it, until MEASURE_SECONDS or MEASURE_STEPS of them have passed; then the
Trainer logs one estimate line (and a warning past a day). A first step slower than SLOW_FIRST_STEP
gets an early, provisional line, so a 50-s step does not leave the user waiting two steps for it. The
progress bar's time left comes from the same clock (rich's own needs several steps inside 30 s).
Checkpoints and sample grids are not steps: the estimate says so.

`time_steps` is `--dry-run`'s measurement: it builds the run's networks and times a few steps at the
real image size on random images: at the real batch when such a step is short, else with the batch
cut to DRY_RUN_BATCH and the time scaled to the real batch in proportion (a CPU's step time grows
about linearly with the batch once it is large).

`data_warning` speaks up for a tiny data set that a run would pass over many times. `dry_run` is
what `dtools train --dry-run` prints: the configuration, what it resolves to, and that measurement.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from dtools.models import lookup_model
from dtools.progress import DAY, duration
from dtools.progress import log as log_line
from dtools.runtime import Runtime, resolve
from dtools.train import memory
from dtools.train.config import TrainConfig, resolved
from dtools.train.data import Batch
from dtools.unet import count_parameters

MEASURE_SECONDS = 3.0  # measure the pace over at least this much time ...
MEASURE_STEPS = 20  # ... or this many steps after the first, whichever comes first
SLOW_FIRST_STEP = 5.0  # a first step slower than this gets a provisional estimate at once
DRY_RUN_BATCH = 8  # --dry-run times steps of at most this many images, then scales to the batch
DRY_RUN_STEPS = 2  # timed steps after one warm-up step
DRY_RUN_FULL_SECONDS = 2.0  # --dry-run times the run's own batch when a step of it takes at most this
# A data set smaller than this that the run passes over more than MANY_EPOCHS times gets a warning.
FEW_IMAGES, MANY_EPOCHS = 100, 20


def pace(seconds_per_step: float) -> str:
    if seconds_per_step >= 0.1:
        return f"{seconds_per_step:.3g} s/step"
    return f"{seconds_per_step * 1e3:.3g} ms/step"


@dataclass
class StepClock:
    """Times the steps of one session, which starts at step `start` and trains to step `total`."""

    start: int
    total: int | None  # None: a run sized in time (its bar counts seconds; no estimate in steps)
    now: Callable[[], float] = time.perf_counter
    first_done: float | None = None  # when the session's first step ended
    first_seconds: float | None = None  # how long it took
    last_step: int = 0
    last_done: float = 0.0
    reported: bool = False  # whether the estimate line has been given
    warned: bool = False  # whether the warning of a long run has been given

    def __post_init__(self) -> None:
        self.began = self.now()
        self.last_step = self.start

    def tick(self, step: int) -> None:
        """Step `step` has just ended."""
        t = self.now()
        if self.first_done is None:
            self.first_done, self.first_seconds = t, t - self.began
        self.last_step, self.last_done = step, t

    @property
    def measured_steps(self) -> int:
        return self.last_step - self.start - 1 if self.first_done is not None else 0

    def seconds_per_step(self) -> float | None:
        """The pace over the steps after the first (None before one of them has ended)."""
        if self.measured_steps < 1:
            return None
        return (self.last_done - self.first_done) / self.measured_steps

    def remaining(self) -> float | None:
        """Seconds until step `total`, at the measured pace (at the first step's, before that)."""
        if self.total is None:
            return None
        sps = self.seconds_per_step()
        if sps is None:
            sps = self.first_seconds
        return None if sps is None else sps * (self.total - self.last_step)

    def eta_text(self) -> str:
        """The progress bar's time left: 'ETA 7m05s', 'ETA 9.1 days', 'ETA -' before any step ended."""
        left = self.remaining()
        return "ETA -" if left is None else f"ETA {duration(left)}"

    def pace(self) -> float | None:
        """Seconds per step: measured, else the first step's, else None."""
        return self.seconds_per_step() or self.first_seconds

    def report(self, budget_left: float | None) -> list[str]:
        """The lines to log after a step: a provisional estimate after a slow first step, the estimate
        once the pace is measured (and, once, the warning of a run longer than a day); else none.
        `budget_left`: seconds left of --max-minutes."""
        if self.total is None:
            return []
        left = self.total - self.last_step
        if left <= 0:
            return []
        if self.provisional():
            sps, how = self.first_seconds, "the first step, warm-up included"
        elif self.ready():
            self.reported = True
            sps, how = self.seconds_per_step(), f"steps {self.start + 2}-{self.last_step}"
        else:
            return []
        line, warning = estimate_lines(sps, left, self.total, budget_left, how)
        if warning is None or self.warned:
            return [line]
        self.warned = True
        return [line, warning]

    def ready(self) -> bool:
        """Whether the pace has been measured long enough for the estimate line (given once)."""
        if self.reported or self.seconds_per_step() is None:
            return False
        return self.measured_steps >= MEASURE_STEPS or self.last_done - self.first_done >= MEASURE_SECONDS

    def provisional(self) -> bool:
        """Whether the first step was so slow that it deserves an estimate of its own."""
        return self.last_step == self.start + 1 and (self.first_seconds or 0.0) >= SLOW_FIRST_STEP


def estimate_lines(
    sps: float, steps_left: int, total: int, budget_s: float | None, how: str
) -> tuple[str, str | None]:
    """The estimate for a pace of `sps` s/step with `steps_left` of `total` steps to go, and a warning
    when those steps would take more than a day (None when shorter, or a shorter --max-minutes ends them)."""
    need = sps * steps_left
    steps = f"the run's {total} steps" if steps_left == total else f"the {steps_left} steps to step {total}"
    line = f"estimate: {pace(sps)} ({how}), so {steps} take about {duration(need)}"
    if budget_s is not None and budget_s < need:
        line += (f", but --max-minutes ends this session after about {min(steps_left, int(budget_s / sps))} "
                 "of them")
    line += "; checkpoints and sample grids come on top"
    warning = None
    if need > DAY and (budget_s is None or budget_s > DAY):
        warning = (f"warning: this run would take about {duration(need)} on this machine; for a shorter one "
                   "give fewer --max-steps or a --max-minutes budget, a smaller network (--preset, "
                   "--base-channels), smaller images (dtools prep --size 32) or a GPU")
    return line, warning


def data_warning(cfg: TrainConfig) -> str | None:
    """A warning for a tiny data set that the run would go over many times, or None."""
    if cfg.total_steps() is None:  # a run sized in time: its steps are not known yet
        return None
    epochs = cfg.total_steps() * cfg.images_per_step() / max(cfg.num_images, 1)
    if cfg.num_images >= FEW_IMAGES or epochs <= MANY_EPOCHS:
        return None
    return (f"warning: only {cfg.num_images} training images, and {cfg.total_steps()} steps of "
            f"{cfg.images_per_step()} show each about {epochs:.0f} times: the model will learn these images "
            "by heart rather than their kind; a few hundred or more make a generative model")


def time_steps(cfg: TrainConfig, rt: Runtime) -> dict[str, float | int | str]:
    """--dry-run's estimate: the run's networks on random images of its size, one warm-up step, then
    DRY_RUN_STEPS timed ones, at the run's batch when a step of it would take at most
    DRY_RUN_FULL_SECONDS, else at DRY_RUN_BATCH images with the time scaled to the batch."""
    trial = TrainConfig.from_dict({**cfg.to_dict(), "batch_size": min(cfg.batch_size, DRY_RUN_BATCH),
                                   "grad_accum": 1}, cfg.betas)

    def real_batch() -> Batch:
        shape = (trial.batch_size, cfg.channels, cfg.image_size, cfg.image_size)
        return Batch(torch.rand(shape, device=rt.device) * 2 - 1)

    def timed(steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            method.train_step()
        if rt.device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / steps

    torch.manual_seed(cfg.seed)
    method = lookup_model(cfg.model_type).method_class()(trial, rt, real_batch)
    method.train_step()  # warm-up
    small = timed(1)
    if small * cfg.batch_size / trial.batch_size <= DRY_RUN_FULL_SECONDS:
        trial.batch_size, trial.grad_accum = cfg.batch_size, cfg.grad_accum
        method.train_step()  # warm-up at the full size
    sps = timed(DRY_RUN_STEPS) * cfg.batch_size / trial.batch_size
    how = f"{DRY_RUN_STEPS} steps of {trial.batch_size} random images timed on {rt.device}"
    if trial.batch_size != cfg.batch_size:
        how += f", scaled to batch {cfg.batch_size}"
    total = cfg.total_steps()
    if total is None:  # a run sized in time: how many steps its minutes buy
        seconds = cfg.max_minutes * 60
        return {"seconds_per_step": round(sps, 4), "steps": int(seconds / sps), "seconds": round(seconds, 1),
                "how": how}
    return {"seconds_per_step": round(sps, 4), "steps": total, "seconds": round(sps * total, 1), "how": how}


def dry_run(cfg: TrainConfig, *, resume: bool = False, log: Callable[[str], None] = log_line,
            estimate: bool = True) -> dict[str, Any]:
    """What `dtools train --dry-run` prints: the configuration and what it resolves to, and, with
    `estimate`, the time the run's steps would take, measured on a few steps (time_steps; its lines,
    and the warning about a tiny data set, go to `log`)."""
    rt = resolve(cfg.device, cfg.precision, cfg.compile)
    networks = lookup_model(cfg.model_type).network_config(cfg.model).trained()
    counts = {name: count_parameters(net) for name, net in networks.items()}
    facts = {**resolved(cfg, rt), "micro_batch": cfg.batch_size // cfg.grad_accum,
             "parameters": sum(counts.values())}
    if len(counts) > 1:
        facts["parameters_by_network"] = counts
    out = {"config": cfg.to_dict(), "resolved": facts, "resume": resume}
    mem = memory.estimate(cfg, rt)
    free = memory.available(rt.device)
    out["memory"] = mem.to_dict(free)
    free_text = f"; {free / memory.GIB:.1f} GiB available" if free is not None else ""
    log(f"memory: about {mem.total / memory.GIB:.2f} GiB (batch {mem.micro_batch} at {cfg.image_size} px, "
        f"a floor){free_text}")
    if estimate:
        timed = time_steps(cfg, rt)
        out["estimate"] = timed
        line, warning = estimate_lines(timed["seconds_per_step"], timed["steps"], timed["steps"], None,
                                       timed["how"])
        for text in (data_warning(cfg), line, warning):
            if text:
                log(text)
    return out
