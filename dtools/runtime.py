"""Device, precision, memory format, optimizer and CPU threads: how a network runs, shared by train,
sample and fid.

`resolve(device, precision, compile)` turns the options into one `Runtime`; its methods are the one
place the training loop and sampling get their network ready (`prepare`: device and memory format),
their inputs (`layout`), their optimizer (`adam`) and their denoiser (`model_fn`: autocast, fp32 out),
so that a train grid and `dtools sample` run the network the same way. `ThreadGuard` picks the
training loop's CPU thread count from the step times it sees. The measurements behind every default
are in docs/performance.md.
"""

from __future__ import annotations

import contextlib
import os
import statistics
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from dtools.errors import DtoolsError

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA when present, then Apple's MPS, else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DtoolsError("--device cuda was asked for, but no CUDA GPU is available; use cpu or auto")
        return torch.device(name)
    if name == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise DtoolsError("--device mps was asked for, but MPS is not available")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise DtoolsError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")


def cpu_has_amx_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (Intel AMX) and the OS lets torch use it.

    Only AMX makes CPU bf16 faster than fp32 (1.3-1.8x here); avx512_bf16 alone was slower than fp32
    (docs/performance.md), and torch.ops.mkldnn._is_mkldnn_bf16_supported() is true even where bf16 is
    emulated, so it cannot tell.
    """
    caps = getattr(torch.cpu, "get_capabilities", None)
    if caps is not None:
        has = bool(caps().get("amx_bf16"))
    else:  # older torch: the kernel's view
        try:
            with open("/proc/cpuinfo") as f:
                has = "amx_bf16" in f.read()
        except OSError:
            has = False
    init = getattr(getattr(torch._C, "_cpu", None), "_init_amx", None)  # asks Linux for the AMX tile state
    return has and (init is None or bool(init()))


def resolve_precision(name: str, device: torch.device) -> str:
    """`auto`: bf16 on a CUDA GPU that supports it, fp16 on older GPUs; bf16 on a CPU with AMX, fp32 on
    other CPUs (bf16 autocast is slower than fp32 there) and on MPS."""
    if name not in PRECISIONS:
        raise DtoolsError(f"unknown precision {name!r}; choose one of {', '.join(PRECISIONS)}")
    if name != "auto":
        if name == "fp16" and device.type == "cpu":
            raise DtoolsError("--precision fp16 needs a GPU; on the CPU use bf16 or fp32")
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_has_amx_bf16():
        return "bf16"
    return "fp32"


def autocast(device: torch.device, precision: str):
    """The autocast context for a resolved precision (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def default_compile(device: torch.device) -> bool:
    """torch.compile pays off on a GPU; on a 2-core CPU its minute of compiling does not (docs/train.md)."""
    return device.type == "cuda"


@dataclass(frozen=True)
class Runtime:
    """Where and how a network runs: the resolved --device, --precision and --compile."""

    device: torch.device
    precision: str
    compile: bool

    def autocast(self):
        return autocast(self.device, self.precision)

    def describe(self) -> str:
        """e.g. 'cpu fp32' or 'cuda bf16 compiled', for log lines."""
        return f"{self.device.type} {self.precision}{' compiled' if self.compile else ''}"

    @property
    def memory_format(self) -> torch.memory_format:
        """channels-last on the CPU and on CUDA, whose convolution kernels (oneDNN, cuDNN) prefer it:
        1.1x in fp32 and up to 1.4x in bf16 on this CPU; MPS keeps the default layout."""
        return torch.channels_last if self.device.type in ("cpu", "cuda") else torch.contiguous_format

    def prepare(self, network: nn.Module) -> nn.Module:
        """The network on the device, its 4-d weights in `memory_format` (state-dict keys and values are
        unchanged); returns it."""
        return network.to(self.device, memory_format=self.memory_format)

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """An image batch (B, C, H, W) in `memory_format` (other tensors as they are)."""
        return x.contiguous(memory_format=self.memory_format) if x.dim() == 4 else x

    def adam(self, params: Iterable[torch.Tensor], **kw) -> torch.optim.Adam:
        """torch.optim.Adam, as one fused kernel on the CPU and on CUDA (2-5 % of a CPU training step
        saved); keyword arguments go to Adam. Moments loaded with `load_state_dict` (a resumed run's,
        written NCHW) are laid out like their parameters again: the fused CPU kernel walks parameter,
        gradient and moments as flat memory, and mixed layouts would silently mix up elements."""
        fused = self.device.type in ("cpu", "cuda")
        optimizer = torch.optim.Adam(params, fused=fused or None, **kw)
        optimizer.register_load_state_dict_post_hook(_moments_like_params)
        return optimizer

    def model_fn(self, network: nn.Module) -> Callable[..., torch.Tensor]:
        """`fn(x_t, t, cond=None)` for the samplers: the network in this precision and memory format,
        fp32 out. Train's sample grids and `dtools sample` both use it, so they draw the same images.
        A condition (class indices (B,)) goes to the network, on its device, as `network(x_t, t, cond)`;
        without one the network is called as `network(x_t, t)`."""

        def fn(x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
            conds = () if cond is None else (cond.to(self.device),)
            with self.autocast():
                return network(self.layout(x_t), t, *conds).float()

        return fn


def _moments_like_params(optimizer: torch.optim.Optimizer) -> None:
    """Lay every per-parameter state tensor out like its parameter (channels-last weights)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for key, v in state.items():
                if isinstance(v, torch.Tensor) and v.shape == p.shape and v.stride() != p.stride():
                    state[key] = torch.empty_like(p, dtype=v.dtype).copy_(v)


def resolve(device: str = "auto", precision: str = "auto", compile: bool | None = None) -> Runtime:
    """The one place where `auto` and an unset --compile become concrete choices."""
    dev = resolve_device(device)
    compiled = default_compile(dev) if compile is None else compile
    return Runtime(dev, resolve_precision(precision, dev), compiled)


class ThreadGuard:
    """Chooses, from the step times of a training loop, between all CPU threads and one.

    Why (docs/performance.md): two threads make a training step up to 1.6x faster on an idle 2-core
    CPU, but when another process takes a core they wait on each other, and oneDNN's bf16 weight-
    gradient kernels spin at their own barriers whatever OMP_WAIT_POLICY says: a step then took ~15x
    longer than on one thread. No fixed thread count is right for both, so the loop measures.

    How: `record(seconds)` takes each step's time and returns the thread count for the next step.
    After `warmup` steps it times `trial` steps on all threads and `trial` on one, and keeps the
    faster (a "trial"). On all threads, `patience` steps in a row slower than `factor` x the recent
    median mean the cores got busy: it tries one thread again. On one thread, it tries all threads
    again after `retry_s` seconds of steps, doubling the wait (up to `max_retry_s`) each time one
    thread still wins. A trial step slower than `factor` x the steps it is compared with ends the
    trial at once, so a retry in a still-busy machine costs one step. The first step after a switch
    is not compared (it may rebuild kernels) unless it is that slow.
    """

    def __init__(self, threads: int, *, factor: float = 2.0, warmup: int = 2, trial: int = 3,
                 patience: int = 2, retry_s: float = 30.0, max_retry_s: float = 240.0):
        assert threads > 1 and factor > 1 and trial >= 1 and patience >= 1
        self.full, self.factor, self.trial, self.patience = threads, factor, trial, patience
        self.retry_base, self.max_retry_s = retry_s, max_retry_s
        self.best = self.threads = threads  # the kept count, and the count of the next step
        self.switches = 0
        self._skip = warmup  # steps left that are not compared
        self._recent: deque[float] = deque(maxlen=max(trial, 9))  # settled step times on `best`
        self._slow = 0  # slow steps in a row on `best`
        self._trial: list[float] | None = None  # the running trial's step times (on `threads`)
        self._baseline = 0.0  # the median it is compared with
        self._clock = 0.0  # seconds of steps seen
        self._retry_s, self._retry_at = retry_s, None
        self._tried = False  # the first trial has run

    def record(self, seconds: float) -> int:
        """One step's wall time on `self.threads` threads; returns the thread count for the next step."""
        self._clock += seconds
        if self._trial is not None:
            self._trial_step(seconds)
        elif self._skip:
            self._skip -= 1
        else:
            self._steady_step(seconds)
        return self.threads

    def _steady_step(self, seconds: float) -> None:
        ref = statistics.median(self._recent) if len(self._recent) >= self.trial else None
        self._slow = self._slow + 1 if ref is not None and seconds > self.factor * ref else 0
        self._recent.append(seconds)
        if len(self._recent) < self.trial:
            return
        other = 1 if self.best == self.full else self.full
        if not self._tried:
            self._start_trial(other, self._recent)
        elif self._slow >= self.patience:
            self._start_trial(other, list(self._recent)[-self.patience:])
        elif self.best == 1 and self._retry_at is not None and self._clock >= self._retry_at:
            self._start_trial(self.full, self._recent)

    def _start_trial(self, threads: int, compare_with) -> None:
        self._tried, self._slow = True, 0
        self._baseline = statistics.median(compare_with)
        self._trial, self._skip = [], 1
        self._switch(threads)

    def _trial_step(self, seconds: float) -> None:
        assert self._trial is not None
        if seconds > self.factor * self._baseline:  # far worse: no need to see more
            return self._end_trial(won=False)
        if self._skip:
            self._skip -= 1
            return
        self._trial.append(seconds)
        if len(self._trial) >= self.trial:
            self._end_trial(won=statistics.median(self._trial) < self._baseline)

    def _end_trial(self, won: bool) -> None:
        tried, times = self.threads, self._trial or []
        self._trial = None
        if won:
            self.best = tried
            self._recent.clear()
            self._recent.extend(times)
            self._retry_s = self.retry_base
        else:
            if tried == self.full:  # one thread still wins: wait longer before the next retry
                self._retry_s = min(2 * self._retry_s, self.max_retry_s)
            self._recent.clear()
            self._recent.append(self._baseline)
            self._switch(self.best)
            self._skip = 1
        self._retry_at = self._clock + self._retry_s if self.best == 1 else None

    def _switch(self, threads: int) -> None:
        if threads != self.threads:
            self.threads, self.switches = threads, self.switches + 1

    @classmethod
    def for_runtime(cls, rt: Runtime) -> ThreadGuard | None:
        """A guard for a training loop on `rt`: on the CPU with more than one thread, unless the thread
        count was chosen by hand (OMP_NUM_THREADS set): then it stays as it is."""
        if rt.device.type != "cpu" or os.environ.get("OMP_NUM_THREADS") or torch.get_num_threads() < 2:
            return None
        return cls(torch.get_num_threads())

    def apply(self, seconds: float) -> None:
        """`record` a step, and set torch's thread count to the answer."""
        n = self.record(seconds)
        if n != torch.get_num_threads():
            torch.set_num_threads(n)
