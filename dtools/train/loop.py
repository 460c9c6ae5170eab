"""The training loop: one session of a run, from its folder's state to a checkpoint.

Trainer(cfg) has no side effects; `run()` first calls `setup()` (prepare RUN, load the data and, with
--resume, the state, build the method's networks, EMA and optimizers, write config.json), then steps
until --max-steps / --epochs, --max-minutes or a stop signal (SIGINT/SIGTERM finish the step and save).
A non-finite loss, gradient or weight stops the run before anything is written, so the last
checkpoint stays good.

The Trainer is the same for every `--model`; what differs is a Method (dtools.train.method): the
DDPM's in ddpm.py, the baselines' in gan.py and vae.py; the --model's spec (dtools.models) names it.
"""

from __future__ import annotations

import contextlib
import errno
import math
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dtools.checkpoint import save_model
from dtools.errors import DtoolsError
from dtools.models import lookup_model
from dtools.posthoc_ema import snapshot_due, snapshot_name
from dtools.progress import Bar, fmt_time, progress_bar
from dtools.progress import log as log_line
from dtools.runtime import ThreadGuard, resolve
from dtools.train import distributed, memory
from dtools.train.config import TrainConfig, applies, resolved
from dtools.train.data import Batch, BatchStream, augment, fingerprint, load_images, load_labels
from dtools.train.estimate import StepClock, data_warning
from dtools.train.finetune import describe_recipe, load_init
from dtools.train.lr import factor as lr_factor
from dtools.train.method import Method, NonFiniteLoss, Weights, Window
from dtools.train.run import (
    GUIDE_FILE,
    METRICS_FILE,
    MODEL_FILE,
    POSTHOC_DIR,
    SAMPLES_DIR,
    STATE_FILE,
    append_metric,
    check_run_dir,
    last_snapshot,
    prepare_run_dir,
    prune_snapshots,
    read_metrics,
    write_config,
    write_metrics,
)
from dtools.train.signals import StopSignals, abort, abort_message, stop_message
from dtools.train.state import load_state, read_state_header, save_state


@dataclass
class TrainResult:
    step: int
    total_steps: int | None  # None: a run sized in time
    stopped: str  # "done", "max_minutes", "interrupted" or "nothing_to_do" (already at total_steps)
    loss: float | None  # mean of the last --log-every window
    elapsed: float
    run: Path
    checkpoint_step: int
    metrics: list[dict[str, Any]] = field(default_factory=list)
    losses: dict[str, float] = field(default_factory=dict)  # the method's named losses, last window
    loss_steps: int = 0  # the steps that window held (fewer than --log-every at a run's end)
    start_step: int = 0  # the step this session started at
    rank: int = 0  # this process's rank among several training processes (0: the one that reports)


class Trainer:
    """One training session of a run: built from a config (nothing happens yet), then `run()` sets it
    up (`setup()`) and steps until --max-steps / --epochs, --max-minutes or a stop signal."""

    def __init__(
        self, cfg: TrainConfig, *, resume: bool = False, force: bool = False,
        log: Callable[[str], None] = log_line, progress: bool | None = None,
    ):
        self.cfg, self.log = cfg.validate(), log
        self.resume, self.force = resume, force
        self.run_dir = Path(cfg.out)
        self.total = cfg.total_steps()
        self.show_bar = sys.stderr.isatty() if progress is None else progress
        self.step, self.elapsed_before, self.metrics = 0, 0.0, []
        self.checkpoint_step = -1  # the step of the last checkpoint on disk (-1: none yet)
        self.start_step, self.loss_steps = 0, 0
        self.writing = threading.Lock()  # held while RUN's files are written: a second Ctrl-C waits for it
        self.group = distributed.Group()  # the training processes (under torchrun; see setup)

    def setup(self) -> bool:
        """Check RUN and the device, load the data (and with --resume the state), prepare RUN, build
        the method (its networks, EMA and optimizers), write config.json. False when a resumed run is
        already at its last step: then nothing was touched."""
        cfg = self.cfg
        # under torchrun: join the other processes (a no-op in one process); only rank 0 writes and speaks
        self.group, self.rt = distributed.join(resolve(cfg.device, cfg.precision, cfg.compile), cfg)
        if not self.group.is_main:
            self.log, self.show_bar = (lambda message: None), False
        # nothing is written before the checks (e.g. no GPU: RUN is not created)
        restart = self.group.on_main(lambda: check_run_dir(self.run_dir, self.resume, self.force))
        self.device = self.rt.device
        # a batch that cannot fit is refused now, not killed by the OOM killer mid-run
        memory.check(memory.estimate(cfg, self.rt, self.group.world), memory.available(self.device))
        if self.resume:  # check the state file before spending time on data
            self.step = int(read_state_header(self.run_dir / STATE_FILE)["step"])
            if self.total is not None and self.step >= self.total:
                return False
        state = load_state(self.run_dir / STATE_FILE) if self.resume else None
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        n = self._load_data()
        self.group.on_main(lambda: prepare_run_dir(self.run_dir, self.resume, self.force))
        if restart:
            self.log(f"{self.run_dir}: its earlier run stopped before its first checkpoint; starting it over")

        # Networks, EMA, optimizers (seeded, so a run is reproducible)
        torch.manual_seed(cfg.seed)
        self.method: Method = lookup_model(cfg.model_type).method_class()(cfg, self.rt, self.real_batch)
        self.stream = BatchStream(n, cfg.seed)
        if state is not None:
            self._restore(*state, n)
        elif cfg.init_from is not None:
            self.log(describe_recipe(cfg))
            self.log(load_init(self.method, cfg))
        if self.rt.compile:
            self.method.compile()
        self.method.distribute(self.group)
        self.group.sync_rng()
        self.group.on_main(lambda: write_config(self.run_dir, {**cfg.to_dict(),
                                                               "resolved": resolved(cfg, self.rt)}))
        self.session_start = time.monotonic()
        self.clock = self.elapsed_before  # the training time all processes go by (see update_clock)
        self.start_step = self.step
        # what rank 0 finds in RUN, on every process (not each one's view of a shared file system)
        guide, step, elapsed = self.group.from_main(self.group.on_main(self._found) or [0.0, 0.0, 0.0])
        self.guide_kept = bool(guide)
        self.last_snapshot = None if step < 0 else (int(step), elapsed)
        return True

    def _found(self) -> list[float]:
        """[guide kept (0/1), step, elapsed of the last --posthoc-ema snapshot (step -1: none)] in RUN."""
        return [float((self.run_dir / GUIDE_FILE).exists()), *(last_snapshot(self.run_dir) or (-1, 0.0))]

    def _load_data(self) -> int:
        """Decode the images once, kept as uint8 (N, C, H, W) on the CPU; returns N."""
        cfg = self.cfg
        self.images = load_images(cfg.data)
        # (N,) int64 class indices of a class-conditional run's data
        self.labels: torch.Tensor | None = load_labels(cfg.data, cfg.classes) if cfg.classes else None
        n, c, h, w = self.images.shape
        if (c, h) != (cfg.channels, cfg.image_size):
            raise DtoolsError(
                f"{cfg.data}: images are {h}x{w}x{c}, but the run was set up for "
                f"{cfg.image_size}x{cfg.image_size}x{cfg.channels}"
            )
        fp = fingerprint(self.images, self.labels)
        if self.resume and cfg.data_fingerprint and fp != cfg.data_fingerprint:
            raise DtoolsError(f"{cfg.data}: these are not the images the run in {cfg.out} was trained on")
        cfg.num_images, cfg.data_fingerprint = n, fp
        return n

    def _restore(self, tensors: dict[str, torch.Tensor], info: dict[str, Any], n: int) -> None:
        """Continue where the state on disk left off; metrics logged after it are dropped."""
        self.stream = self.method.restore(self.run_dir / STATE_FILE, tensors, info)
        if self.stream.n != n:
            raise DtoolsError(f"{self.cfg.data}: holds {n} images, but the run was trained on "
                              f"{self.stream.n}")
        self.step, self.elapsed_before = int(info["step"]), float(info.get("elapsed", 0.0))
        self.checkpoint_step = self.step
        self.group.on_main(lambda: prune_snapshots(self.run_dir, self.step))  # taken again as the run goes on
        self.metrics = read_metrics(self.run_dir / METRICS_FILE, self.step)
        self.group.on_main(lambda: write_metrics(self.run_dir / METRICS_FILE, self.metrics))

    def elapsed(self) -> float:
        """Seconds of training over all sessions of the run, by this process's clock."""
        return self.elapsed_before + time.monotonic() - self.session_start

    def update_clock(self) -> None:
        """Set `clock` to the run's training time as of the step just taken, the same on every process
        (the latest of their clocks): what a run sized in time goes by, so that its lr, its guide and
        post-hoc snapshots and its end fall at the same step on all of them (each by its own clock, they
        would call different collectives at that step and wait on each other until the timeout)."""
        self.clock = self.group.latest(self.elapsed()) if self.total is None else self.elapsed()

    def recorded_time(self) -> float:
        """The training time a checkpoint records (rank 0 writes it): the run's clock, if another
        process's is ahead of rank 0's, so that a resumed run continues from where all of them were."""
        return max(self.elapsed(), self.clock)

    def real_batch(self) -> Batch:
        """The next --batch-size images of the shuffled data, each flipped with probability 1/2 (--flip), on
        the device: (B, C, H, W) in [-1, 1], with their labels when the data has them; of several
        processes' global batch, this one's slice."""
        idx = self.stream.next(self.cfg.batch_size)
        x0 = self.group.shard(augment(self.images[idx], self.cfg.flip)).to(self.device, non_blocking=True)
        labels = None if self.labels is None else self.group.shard(self.labels[idx]).to(self.device)
        return Batch(x0.float() / 127.5 - 1.0, labels)  # (B, C, H, W) in [-1, 1]

    def write_samples(self) -> None:
        """samples/step_XXXXXX.png: EMA samples of fixed seeds (those of `dtools sample --seed SEED`)."""
        from dtools.grid import make_grid
        from dtools.images import save_png, to_uint8
        from dtools.samplers import image_seed

        cfg, device = self.cfg, self.device
        seeds = [image_seed(cfg.seed, i) for i in range(cfg.sample_count)]
        # sampling must not disturb the training RNG streams (exact resume)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            x = self.method.sample(seeds)
        nrow = math.ceil(math.sqrt(cfg.sample_count))
        grid = make_grid(to_uint8(x), nrow=nrow, scale=max(1, 64 // cfg.image_size))
        with self.writing:
            save_png(grid, self.run_dir / SAMPLES_DIR / f"step_{self.step:06d}.png", force=True)

    def save_checkpoint(self) -> None:
        """model.safetensors, metrics.jsonl, the curves, then train-state.safetensors (the commit point);
        a second Ctrl-C waits until all are written. Of several processes, rank 0 writes."""
        with self.writing:
            for name, module in self.method.networks().items():
                if not all(bool(torch.isfinite(p).all()) for p in module.parameters()):
                    raise NonFiniteLoss(f"the {name} are not finite")
            try:
                self.group.on_main(self._save_checkpoint)
            except OSError as e:
                if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                raise self._disk_full() from None
            self.checkpoint_step = self.step  # before a second Ctrl-C may name it

    def _guide_due(self, end: bool) -> bool:
        """Whether the run has reached --guide-at and has no guide snapshot yet (a denoiser's only)."""
        cfg = self.cfg
        if not (applies("guide_at", cfg.model_type) and cfg.guide_at) or self.guide_kept:
            return False
        return self.progress() >= cfg.guide_at and not end

    def save_guide(self) -> None:
        """RUN/guide.safetensors: the model checkpoint as it is now, kept as the run's weaker model for
        autoguidance (`dtools sample RUN --guide RUN --guidance W`); written once, rank 0."""
        with self.writing:
            self.group.on_main(lambda: self._save_model(self.run_dir / GUIDE_FILE))
        self.guide_kept = True
        self.log(f"step {self.step}: kept {self.run_dir / GUIDE_FILE} (--guide-at {self.cfg.guide_at:g}: "
                 "a weaker model to guide with)")

    def _posthoc_due(self) -> bool:
        """Whether the run owes its next --posthoc-ema snapshot (posthoc_ema.snapshot_due)."""
        cfg = self.cfg
        if not (applies("posthoc_ema", cfg.model_type) and cfg.posthoc_ema):
            return False
        last = 0.0 if self.last_snapshot is None else cfg.progress(*self.last_snapshot) or 0.0
        return snapshot_due(self.progress(), last, cfg.posthoc_ema)

    def save_snapshots(self) -> None:
        """RUN/posthoc/step_SSSSSSS-W.WWW.safetensors: each tracked power EMA as a model checkpoint of
        its own (its "ema_length" W), for `dtools ema`; rank 0 writes."""
        def write() -> None:
            (self.run_dir / POSTHOC_DIR).mkdir(exist_ok=True)
            for sigma_rel, weights in self.method.snapshots():
                self._save_model(self.run_dir / POSTHOC_DIR / snapshot_name(self.step, sigma_rel),
                                 weights={"ema": weights}, ema={"ema_length": sigma_rel})

        with self.writing:
            try:
                self.group.on_main(write)
            except OSError as e:
                if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                raise self._disk_full() from None
        self.last_snapshot = (self.step, self.clock)

    def _save_model(self, path: Path, weights: Weights | None = None,
                    ema: dict[str, Any] | None = None) -> dict[str, Any]:
        """The model checkpoint at `path` (with other `weights` and EMA header fields `ema` when given:
        a --posthoc-ema snapshot); returns its header's fields."""
        method = self.method
        own, config, header = method.checkpoint()
        weights = own if weights is None else weights
        if ema is not None:
            header = {k: v for k, v in header.items() if k not in ("ema_decay", "ema_length")} | ema
        meta = {**header, "step": self.step, "images_seen": self.step * method.images_per_step,
                "elapsed": round(self.recorded_time(), 3), "train": self.cfg.to_dict()}
        save_model(path, weights, config=config, model_type=method.model_type, meta=meta, force=True)
        return meta

    def _save_checkpoint(self) -> None:
        tensors, info = self.method.capture(self.stream)
        meta = self._save_model(self.run_dir / MODEL_FILE)
        write_metrics(self.run_dir / METRICS_FILE, self.metrics)
        if self.metrics:
            self._plot()
        # The state goes last: it is what --resume trusts, and it only moves once the rest is on disk.
        save_state(self.run_dir / STATE_FILE, tensors, {**meta, **info, "elapsed": self.recorded_time()})

    def _plot(self) -> None:
        from dtools.plots import metric_curves

        for plot in self.method.plots:
            records = [r for r in self.metrics if all(k in r for k in plot.keys)]
            steps = [r["step"] for r in records]
            series = {k: [r[k] for r in records] for k in plot.keys}
            metric_curves(steps, series, self.run_dir / plot.file, title=plot.title, ylabel=plot.ylabel,
                          log_y=plot.log_y, ylim=plot.ylim, force=True)

    def run(self) -> TrainResult:
        """Set up, then train to the end of the session; returns what happened."""
        with distributed.guard(lambda: self.group):  # one line for a broken run of several processes
            return self._run()

    def _run(self) -> TrainResult:
        if not self.setup():
            return TrainResult(self.step, self.total, "nothing_to_do", None, 0.0, self.run_dir, self.step,
                               start_step=self.step, rank=self.group.rank)
        cfg, rt = self.cfg, self.rt
        self.log(f"training {self.run_dir}: {cfg.num_images} images {cfg.image_size}x{cfg.image_size}x"
                 f"{cfg.channels}, {self.method.describe()}, {rt.device} "
                 f"{rt.precision}{' compiled' if rt.compile else ''}{self.group.describe()}, {self._span()}")
        warning = data_warning(cfg)
        if warning:
            self.log(warning)
        window, stopped = Window(), "done"
        # --max-minutes caps this session, unless it sizes the whole run (given alone: time_sized)
        capped = cfg.max_minutes is not None and not cfg.time_sized()
        budget = cfg.max_minutes * 60 if capped else math.inf
        self.pace = StepClock(self.step, self.total)
        done = self.finished()
        guard, threads = ThreadGuard.for_runtime(rt), torch.get_num_threads()  # CPU threads by step times
        try:
            signals = StopSignals(self._stopping, self._abort, self.writing)
            with signals, self._progress_bar() as bar:
                while not done and stopped == "done":
                    self.method.set_lr(cfg.lr * lr_factor(self.progress(), cfg.warmup, cfg.lr_decay))
                    started = time.perf_counter()
                    try:
                        window.add(self.method.train_step())
                    except NonFiniteLoss as e:
                        raise self._diverged(str(e), self.step + 1) from None
                    if guard is not None:
                        guard.apply(time.perf_counter() - started)
                    self.group.sync_buffers(self.method.networks().values())
                    self.step += 1
                    self.pace.tick(self.step)
                    self.update_clock()
                    done = self.finished()
                    if self.step % cfg.log_every == 0 or done:
                        self._close_window(window, bar)
                    if signals.requested:
                        stopped = "interrupted"
                    elif not done and time.monotonic() - self.session_start >= budget:
                        stopped = "max_minutes"
                    stopped = self.group.agree(stopped)  # several processes stop at the same step
                    if stopped != "done" and window.steps:  # the session's last, partial window
                        self._close_window(window, bar)
                    self._advance(bar)
                    self._report_pace(budget)
                    self._write_outputs(end=done or stopped != "done",
                                        samples=stopped != "interrupted", window=window)
        except NonFiniteLoss as e:
            raise self._diverged(str(e), self.step) from None
        finally:
            torch.set_num_threads(threads)
        return TrainResult(self.step, self.total, stopped, self.last_loss(), self.elapsed(), self.run_dir,
                           self.checkpoint_step, self.metrics, self.last_losses(), self.loss_steps,
                           self.start_step, self.group.rank)

    def _report_pace(self, budget: float) -> None:
        """The estimate of the whole run, once the first steps have been timed (see estimate.py)."""
        left = budget - (time.monotonic() - self.session_start) if math.isfinite(budget) else None
        for line in self.pace.report(left):
            self.log(line)

    def _stopping(self, signal_name: str) -> None:
        """Said at once on the first Ctrl-C (or SIGTERM), while the step still runs. A checkpoint being
        written when the signal came is waited for (up to 2 s), so the line names what is on disk."""
        writing = self.writing.acquire(timeout=2.0)
        try:
            saved = self.checkpoint_step
        finally:
            if writing:
                self.writing.release()
        self.log(stop_message(signal_name, self.step + 1, self.pace.pace(), saved))

    def _abort(self) -> None:
        """The second Ctrl-C: end the process now (no file is being written: the caller holds the lock)."""
        abort(abort_message(self.step + 1, self.checkpoint_step, self.run_dir))

    def _close_window(self, window: Window, bar: Bar) -> None:
        rec = self._log_window(window)
        bar.update(loss=self._losses_text(rec, "{:.4f}"), ips=f"{rec['img_per_s']:.0f}")

    def progress(self) -> float:
        """How far the run is, from 0 to 1: in steps, or for a run sized in time, in its training time as of
        the last step (`update_clock`, the same on every process)."""
        if self.total is not None:
            return self.step / self.total
        return self.clock / (self.cfg.max_minutes * 60)

    def finished(self) -> bool:
        """Whether the run has reached its end: its last step, or for a run sized in time, its minutes."""
        return self.progress() >= 1.0

    def _span(self) -> str:
        """What this session will train: 'steps 0->2000' or 'for 15 min in all (0.0 done)'."""
        if self.total is not None:
            return f"steps {self.step}->{self.total}"
        return f"for {self.cfg.max_minutes:g} min in all ({self.elapsed_before / 60:.1f} done)"

    def _step_text(self) -> str:
        return f"step {self.step}" + (f"/{self.total}" if self.total is not None else "")

    def _losses_text(self, rec: dict[str, Any] | None, fmt: str) -> str:
        """'loss 0.0412' (a GAN: 'loss_d 1.21 loss_g 0.93'); '-' for each value not yet logged."""
        return "  ".join(f"{k} {'-' if rec is None else fmt.format(rec[k])}" for k in self.method.losses)

    def _progress_bar(self) -> contextlib.AbstractContextManager[Bar]:
        """step N/M (a run sized in time: step N, the bar in seconds), the bar, loss, img/s, elapsed,
        ETA, time left; it stays on screen when done."""
        fields = {"loss": self._losses_text(None, ""), "ips": "-", "step": str(self.step)}
        columns = ("{task.fields[loss]}", "{task.fields[ips]} img/s")
        if self.total is None:
            return progress_bar("step {task.fields[step]}", round(self.cfg.max_minutes * 60),
                                completed=round(self.elapsed_before), fields=fields, columns=columns,
                                count=False, elapsed=True, transient=False, show=self.show_bar)
        return progress_bar(
            "step {task.completed}/{task.total}", self.total, completed=self.step,
            fields={**fields, "eta": "ETA -"}, columns=columns,
            count=False, elapsed=True, transient=False, show=self.show_bar, remaining="{task.fields[eta]}",
        )

    def _advance(self, bar: Bar) -> None:
        if self.total is None:
            bar.update(completed=min(round(self.elapsed()), round(self.cfg.max_minutes * 60)),
                       step=str(self.step))
        else:
            bar.update(completed=self.step, eta=self.pace.eta_text())

    def _write_outputs(self, end: bool, samples: bool, window: Window) -> None:
        """Sample grid and checkpoint when they are due (and always at the end)."""
        cfg = self.cfg
        if samples and cfg.sample_every and (self.step % cfg.sample_every == 0 or end) and self.group.is_main:
            self.write_samples()
        if self._guide_due(end):
            self.save_guide()
        if self._posthoc_due():
            self.save_snapshots()
        if self.step % cfg.save_every == 0 or end:
            self.save_checkpoint()
            if not self.show_bar:
                last = self.metrics[-1] if self.metrics else None
                self.log(f"{self._step_text()}  {self._losses_text(last, '{:.4g}')}  "
                         f"{window.rate(self.method.images_per_step):.0f} img/s  "
                         f"elapsed {fmt_time(self.elapsed())}  saved {self.run_dir / MODEL_FILE}")

    def _disk_full(self) -> DtoolsError:
        """A checkpoint that did not fit on the disk: each file is written to a temp file that is removed
        on the error, and train-state.safetensors, what --resume continues, is written last, so the
        last checkpoint that was written whole is still there."""
        kept = (f"the checkpoint of step {self.checkpoint_step} in {self.run_dir} is intact; free some "
                "space, then run the same command with --resume to continue from it"
                if self.checkpoint_step >= 0 else
                "no checkpoint had been written yet; free some space, then run the command again")
        return DtoolsError(f"no space left on the disk ({self.run_dir}) for the checkpoint of step "
                           f"{self.step}; stopped, {kept}")

    def _diverged(self, what: str, step: int) -> DtoolsError:
        kept = (f"the last good checkpoint (step {self.checkpoint_step}) in {self.run_dir} is intact"
                if self.checkpoint_step >= 0 else "no checkpoint had been written yet")
        hint = "lower --lr" + ("" if self.cfg.grad_clip or not self.method.clips else " or set --grad-clip 1")
        return DtoolsError(f"training diverged at step {step}: {what}; stopped, {kept}; try a {hint}")

    def _log_window(self, window: Window) -> dict[str, Any]:
        """Close a --log-every window: one metrics record, kept in memory and appended to metrics.jsonl."""
        means = self.group.mean(window.means())  # of several processes, over all
        rec = {"step": self.step, "epoch": self.stream.epoch, **self.method.record(means),
               "img_per_s": round(window.rate(self.method.images_per_step), 2),
               "elapsed": round(self.elapsed(), 3)}
        self.metrics.append(rec)
        if self.group.is_main:
            with self.writing:
                append_metric(self.run_dir / METRICS_FILE, rec)
        self.loss_steps = window.steps
        window.reset(rec["img_per_s"])
        return rec

    def last_loss(self) -> float | None:
        """The mean loss of the last logged window (None for a method without a single "loss")."""
        return self.metrics[-1].get("loss") if self.metrics else None

    def last_losses(self) -> dict[str, float]:
        """The method's named losses in the last logged window."""
        return {k: self.metrics[-1][k] for k in self.method.losses} if self.metrics else {}



def train(
    cfg: TrainConfig, *, resume: bool = False, force: bool = False,
    log: Callable[[str], None] = log_line, progress: bool | None = None,
) -> TrainResult:
    """Train (or, with `resume`, continue) the run described by `cfg`.

    Raises DtoolsError for anything the user can fix, including a non-finite loss (after which
    the last checkpoint on disk is untouched). `progress` forces the progress bar on or off (default:
    on when stderr is a terminal).
    """
    return Trainer(cfg, resume=resume, force=force, log=log, progress=progress).run()
