"""Training on several processes (DistributedDataParallel), on one machine or many, launched by torchrun.

`torchrun --nproc-per-node N [--nnodes M --rdzv-endpoint HOST:PORT] -m dtools train ...` starts N
processes per node that each run the same `dtools train`; `dtools train --nproc N` does the
single-node launch itself (`launch`). torchrun tells each process its RANK, LOCAL_RANK and
WORLD_SIZE; `join` makes the process group from them: NCCL on CUDA (one GPU per process,
cuda:LOCAL_RANK), gloo on the CPU. Nothing else differs between the two.

How the work is split (`Group`):
- `--batch-size` is the global batch. Every process draws the same indices from the same seeded
  BatchStream, flips them with the same draws and takes its `shard`, a disjoint contiguous slice
  of B / WORLD_SIZE images; the methods draw the whole batch's noise (t, ε, z) the same way and take
  their slice of it. So each process's random streams and data position are those of a
  single-process run, and the saved state is the same whatever the number of processes: a run
  resumes on any number of them, a single process included.
- The trained networks are wrapped in DistributedDataParallel (`wrap`): gradients are averaged
  over the processes during the backward pass, so the mean loss over the global batch is what is
  minimised, exactly as in one process; --grad-accum splits each process's slice and synchronises
  only on the last micro-batch (`no_sync`). The buffers (BatchNorm's running statistics, of the EMA
  networks too) are copied from rank 0 after every step (`sync_buffers`): all processes then hold the
  same weights, EMA and buffers. BatchNorm normalises over each process's slice, as DDP does.
- The metrics are averaged over the processes (`mean`); stopping (--max-minutes, Ctrl-C) is agreed
  on (`agree`), so all processes stop at the same step. A run sized in time goes by one clock, the
  latest of the processes' (`latest`): its lr, its guide and post-hoc snapshots and its end fall at
  the same step on all of them.
- Only rank 0 writes the run folder (`on_main`: its error, if any, is raised on every process).

Failures end every process, not a hang: collectives time out (DTOOLS_DIST_TIMEOUT seconds, default
600), a process that stops makes the others' collectives fail at once, and `guard` turns such a
failure into one line naming the rank. `speaks` decides which process prints its error (rank 0, or a
process whose own failure it is), and records it for torchrun's summary; under `launch` the workers
stay quiet and the launcher prints the one root cause.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import datetime
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from dtools.errors import DtoolsError, OptionError, first_line
from dtools.runtime import Runtime

TIMEOUT_ENV = "DTOOLS_DIST_TIMEOUT"  # seconds a collective (or the group's start) may wait
DEFAULT_TIMEOUT = 600.0
LAUNCHED_ENV = "DTOOLS_LAUNCHED"  # set by `launch`: workers leave error lines to the launcher
STOPS = ("done", "max_minutes", "interrupted")  # the loop's stop reasons, in order of precedence

T = TypeVar("T")


class RankFailure(DtoolsError):
    """A failure of this process alone (a collective that broke, an unexpected exception)."""


class PeerLost(RankFailure):
    """A collective failed because another process stopped: a consequence, not a cause."""


class Shared(DtoolsError):
    """An error rank 0 met and reports; the other processes end with it quietly."""


def env_rank() -> tuple[int, int]:
    """(RANK, WORLD_SIZE) from torchrun's environment; (0, 1) outside torchrun."""
    try:
        return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 0, 1


def timeout() -> datetime.timedelta:
    try:
        seconds = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT))
    except ValueError:
        raise DtoolsError(f"{TIMEOUT_ENV} must be a number of seconds") from None
    return datetime.timedelta(seconds=seconds)


@dataclass
class Group:
    """This process's place among the training processes; Group() is a single process, where every
    method is a no-op (one process runs exactly as it did before distribution existed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owned: bool = False  # whether `join` made the process group (it ends when the process does)

    def describe(self) -> str:
        """', 2 processes (gloo)' for the start-of-run log line; '' for one process."""
        if not self.active:
            return ""
        return f", {self.world} processes ({'nccl' if self.device.type == 'cuda' else 'gloo'})"

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def check(self, batch_size: int, grad_accum: int) -> None:
        """--batch-size must split into equal slices (and each slice into --grad-accum micro-batches)."""
        if batch_size % self.world:
            raise OptionError("--batch-size", f"{batch_size} does not split over {self.world} processes; "
                                         f"give a multiple of {self.world}")
        if (batch_size // self.world) % grad_accum:
            raise OptionError("--grad-accum", f"each process's {batch_size // self.world} images do not "
                                              f"split into {grad_accum} micro-batches")

    def shard(self, x: torch.Tensor) -> torch.Tensor:
        """This process's slice of a whole batch's tensor (the leading dimension)."""
        if not self.active:
            return x
        b = x.shape[0] // self.world
        return x[self.rank * b:(self.rank + 1) * b]

    def wrap(self, module: nn.Module) -> nn.Module:
        """The module to call in a training step: DistributedDataParallel around it (the module itself
        keeps its state-dict keys, for checkpoints); the module itself in one process."""
        if not self.active:
            return module
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device] if self.device.type == "cuda" else None
        return DDP(module, device_ids=ids, forward_sync_buffers=False)  # buffers: sync_buffers

    def no_sync(self, net: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
        """A backward pass that only accumulates gradients (an early --grad-accum micro-batch)."""
        return contextlib.nullcontext() if sync or not self.active else net.no_sync()

    def _comm(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device) if self.device.type == "cuda" else t  # NCCL talks CUDA tensors

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Each value's mean over the processes."""
        if not self.active or not values:
            return values
        import torch.distributed as dist

        t = self._comm(torch.tensor(list(values.values()), dtype=torch.float64))
        dist.all_reduce(t)
        return {k: float(v) / self.world for k, v in zip(values, t.cpu().tolist(), strict=True)}

    def latest(self, seconds: float) -> float:
        """The largest of the processes' `seconds` (their training clocks), the same on every process."""
        if not self.active:
            return seconds
        import torch.distributed as dist

        t = self._comm(torch.tensor([seconds], dtype=torch.float64))
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t)

    def from_main(self, values: list[float]) -> list[float]:
        """Rank 0's `values` on every process: what rank 0 read from the run folder, so that no process
        decides by its own view of a shared file system (which may lag behind rank 0's writes)."""
        if not self.active:
            return values
        return self._broadcast(torch.tensor(values, dtype=torch.float64)).tolist()

    def agree(self, stopped: str) -> str:
        """The stop reason of the process that wants to stop most (done < max_minutes < interrupted)."""
        if not self.active:
            return stopped
        import torch.distributed as dist

        t = self._comm(torch.tensor([STOPS.index(stopped)]))
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return STOPS[int(t)]

    def sync_buffers(self, modules: Iterable[nn.Module]) -> None:
        """Rank 0's floating-point buffers (BatchNorm statistics) in every process, in one broadcast."""
        if not self.active:
            return
        import torch.distributed as dist
        from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

        bufs = [b for m in modules for b in m.buffers() if b.is_floating_point()]
        if not bufs:
            return
        flat = self._comm(_flatten_dense_tensors([b.detach() for b in bufs]))
        dist.broadcast(flat, 0)
        with torch.no_grad():
            for b, v in zip(bufs, _unflatten_dense_tensors(flat, bufs), strict=True):
                b.copy_(v)

    def sync_rng(self) -> None:
        """Rank 0's torch RNG state (CPU, and this process's GPU) in every process: the whole batch's
        draws are then the same everywhere, also after a resume on CUDA (each process draws on its
        own GPU, whose state the checkpoint holds only for rank 0's)."""
        if not self.active:
            return
        torch.set_rng_state(self._broadcast(torch.get_rng_state()))
        if self.device.type == "cuda":
            torch.cuda.set_rng_state(self._broadcast(torch.cuda.get_rng_state(self.device)), self.device)

    def _broadcast(self, t: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        out = self._comm(t.clone())
        dist.broadcast(out, 0)
        return out.cpu()

    def on_main(self, fn: Callable[[], T]) -> T | None:
        """Run `fn` on rank 0 only (a write to the run folder); an error there is raised on every
        process (as `Shared` on the others), so none waits for a rank 0 that has stopped."""
        if not self.active:
            return fn()
        message, result = b"", None
        if self.is_main:
            try:
                result = fn()
            except (DtoolsError, OSError) as e:  # OSError: a full disk, a permission
                message = (str(e) if isinstance(e, DtoolsError) else first_line(e)).encode() or b"?"
                error: Exception = e
        n = torch.tensor([len(message)])
        n = self._broadcast(n)
        if int(n):
            text = self._broadcast(torch.frombuffer(bytearray(message.ljust(int(n))), dtype=torch.uint8))
            if self.is_main:
                raise error
            raise Shared(bytes(text.tolist()).decode(errors="replace"))
        return result

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()


def check(processes: int, *, beta: str | None = None, cfg: Any = None) -> None:
    """What several processes cannot do: read --beta from stdin (each would read it), split a --batch-size
    (TrainConfig `cfg`) that is no multiple of their number."""
    if processes <= 1:
        return
    if beta == "-":
        raise OptionError("--beta", "several processes cannot all read the schedule from stdin ('-'); "
                          "write it to a file (dtools schedule cosine > beta.npy) or give its name")
    if cfg is not None:
        Group(0, processes).check(cfg.batch_size, cfg.grad_accum)


def join(rt: Runtime, cfg: Any = None) -> tuple[Group, Runtime]:
    """This process's Group under torchrun (WORLD_SIZE > 1), with the process group started: NCCL on
    CUDA with the device cuda:LOCAL_RANK, gloo otherwise; Group() and `rt` unchanged outside torchrun.
    With a TrainConfig `cfg`, its --batch-size is checked to split over the processes."""
    rank, world = env_rank()
    if world <= 1:
        return Group(device=rt.device), rt
    if cfg is not None:
        Group(rank, world).check(cfg.batch_size, cfg.grad_accum)
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if rt.device.type == "mps":
        raise DtoolsError("--device mps cannot train on several processes; use cuda or cpu")
    device = rt.device
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise RankFailure(f"rank {rank}: LOCAL_RANK {local} but only {torch.cuda.device_count()} "
                              "GPUs; give torchrun --nproc-per-node at most the number of GPUs")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    owned = not dist.is_initialized()
    if owned:
        backend = "nccl" if device.type == "cuda" else "gloo"
        try:
            dist.init_process_group(backend, timeout=timeout(),
                                    device_id=device if device.type == "cuda" else None)
        except (RuntimeError, ValueError) as e:
            raise RankFailure(f"rank {rank}: could not join the {world} training processes "
                              f"({first_line(e)})") from None
        atexit.register(_leave)  # a later Trainer in this process joins the same group
    group = Group(dist.get_rank(), dist.get_world_size(), local, device, owned)
    return group, dataclasses.replace(rt, device=device)


def _leave() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def guard(current: Callable[[], Group]) -> Iterator[None]:
    """A distributed run's unexpected failure (a collective that broke or timed out, an error of this
    process) as one line naming the rank (`current()`: the Trainer's group, once joined)."""
    try:
        yield
    except DtoolsError:
        raise
    except RuntimeError as e:
        group = current()
        if not group.active:
            raise
        text = first_line(e)
        if text.startswith("[") and "] " in text:  # gloo's '[.../pair.cc:561] Connection closed ...'
            text = text.split("] ", 1)[1].split(". ")[0]
        lost = any(s in text.lower() for s in ("closed by peer", "connection reset", "broken pipe",
                                                  "timed out", "timeout"))
        if lost:
            raise PeerLost(f"rank {group.rank}: another training process stopped or did not answer "
                           f"({text[:200]})") from None
        raise RankFailure(f"rank {group.rank}: {text[:300]}") from None


# ---------------------------------------------------------------------------------------------
# Error lines and the launcher


def speaks(e: BaseException) -> bool:
    """Whether this process prints its error line. One process: always. Under torchrun: rank 0, and a
    process whose own failure it is; every process records its message for torchrun's summary (and
    for `launch`, which prints the root cause itself, so its workers print nothing)."""
    rank, world = env_rank()
    if world <= 1:
        return True
    kind = "peer" if isinstance(e, PeerLost) else "rank" if isinstance(e, RankFailure) else \
        "shared" if isinstance(e, Shared) else "error"
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:
        info = {"timestamp": str(int(time.time())), "py_callstack": str(e), "dtools": kind}
        data = {"message": {"message": str(e), "extraInfo": info}}
        with contextlib.suppress(OSError):
            with open(path, "w") as f:
                json.dump(data, f)
    if os.environ.get(LAUNCHED_ENV):
        return False
    return kind in ("rank", "peer") or (rank == 0 and kind != "shared")


def _root_cause(failures: dict[int, Any]) -> tuple[str, int]:
    """(message, exit code) of the failure that caused the others: a process's own error before a
    broken collective, before a signal; the lowest rank among equals."""
    order = {"error": 0, "rank": 1, "shared": 2, "peer": 3}
    best: tuple[int, int, str, int] | None = None
    for rank, failure in failures.items():
        data = getattr(failure, "error_file_data", None) or {}
        message = data.get("message")
        info = message if isinstance(message, dict) else {}
        kind = info.get("extraInfo", {}).get("dtools") if info else None
        if kind is not None:
            key = (order.get(kind, 4), rank, info.get("message", ""), failure.exitcode)
        else:
            why = (f"rank {rank} was stopped by signal {-failure.exitcode}" if failure.exitcode < 0
                   else f"rank {rank} exited with code {failure.exitcode}")
            key = (5, rank, why, 1)
        if best is None or key[:2] < best[:2]:
            best = key
    assert best is not None
    return best[2], best[3] if best[3] > 0 else 1


def launch(argv: list[str], nproc: int) -> int:
    """Run `python -m dtools ARGV` in `nproc` processes on this machine (torchrun --standalone);
    returns the exit code (130: interrupted). A failure is one DtoolsError, its root cause's line."""
    import logging

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    os.environ[LAUNCHED_ENV] = "1"
    # CPU threads shared out between the processes (torchrun would set 1 and say so)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    for name in [n for n in logging.Logger.manager.loggerDict if n.startswith("torch.distributed")]:
        logging.getLogger(name).setLevel(logging.CRITICAL)  # the workers and this line say what matters
    args = parse_args(["--standalone", f"--nproc-per-node={nproc}", "--monitor-interval=0.2",
                       "--module", "dtools", *argv])
    try:
        run(args)
    except ChildFailedError as e:
        if all(f.exitcode == 130 for f in e.failures.values()):
            return 130
        message, code = _root_cause(e.failures)
        if code == 130:
            return 130
        raise DtoolsError(message) from None
    except SignalException as e:  # Ctrl-C or SIGTERM: the workers finish their step and save
        return 128 + int(e.sigval)
    except KeyboardInterrupt:
        return 130
    finally:
        sys.stdout.flush()
    return 0


def without_nproc(argv: list[str]) -> list[str]:
    """The command line with --nproc N (or --nproc=N) taken out: what each launched process runs."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out
