"""What every bench script shares: interleaved timing that drops disturbed rounds, a GEMM rate, peak memory.

Timing rules (docs/performance.md): the candidates of one table run in one process, one call each per
round, in alternating order, so drift and other processes hit all alike; a round in which the process
was preempted (involuntary context switches above `csw_max` per second of the round: another process
took a core) is dropped and the script waits for the CPUs to go quiet; medians of the kept rounds.
Take the exclusive CPU lock around a run whose numbers you quote: `flock -x /tmp/dtools-bench.lock ...`.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


def cpu_busy_fraction(dt: float = 0.5) -> float:
    """Share of the machine's CPU time spent busy over `dt` seconds (from /proc/stat; 0 elsewhere)."""

    def read() -> tuple[int, int]:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v[:3]) + sum(v[5:8]), sum(v)

    try:
        b0, t0 = read()
        time.sleep(dt)
        b1, t1 = read()
    except OSError:
        return 0.0
    return (b1 - b0) / max(1, t1 - t0)


def wait_idle(max_s: float = 60.0) -> None:
    """Sleep until the CPUs were < 10 % busy for three half-seconds in a row (or max_s passed)."""
    ok, end = 0, time.time() + max_s
    while ok < 3 and time.time() < end:
        ok = ok + 1 if cpu_busy_fraction() < 0.1 else 0


def _switches() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw


@dataclass
class Timings:
    """Seconds per call of each candidate over the kept rounds."""

    times: dict[str, list[float]]
    first: dict[str, float]  # the first call (warm-up; compilation when compiling)
    dropped: int = 0
    switches: dict[str, list[int]] = field(default_factory=dict)

    def median(self, name: str) -> float:
        return statistics.median(self.times[name])


def interleaved(
    fns: dict[str, Callable[[], object]], reps: int, warmup: int = 2, csw_max: int = 40,
    sync: Callable[[], None] = lambda: None,
) -> Timings:
    """Time every fn `reps` times, alternating between them; see the module docstring."""
    first = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        fn()
        sync()
        first[name] = time.perf_counter() - t0
    for _ in range(warmup - 1):
        for fn in fns.values():
            fn()
    sync()
    names = list(fns)
    times: dict[str, list[float]] = {k: [] for k in names}
    switches: dict[str, list[int]] = {k: [] for k in names}
    attempts = dropped = 0
    while len(times[names[0]]) < reps and attempts < 4 * reps:
        attempts += 1
        order = names if attempts % 2 else names[::-1]
        rt, rc = {}, {}
        for name in order:
            c0, t0 = _switches(), time.perf_counter()
            fns[name]()
            sync()
            rt[name], rc[name] = time.perf_counter() - t0, _switches() - c0
        # the limit grows with the round's length: 10-s rounds (seed64 training) always passed 40 and all
        # but one of 20 were dropped in the first full run (docs/performance.md)
        limit = csw_max * max(1.0, sum(rt.values()))
        if csw_max and max(rc.values()) > limit and attempts < 4 * reps:
            dropped += 1
            wait_idle()
            continue
        for name in names:
            times[name].append(rt[name])
            switches[name].append(rc[name])
    if not times[names[0]]:
        sys.exit("no undisturbed round: the CPUs were busy the whole time")
    return Timings(times, first, dropped, switches)


def gemm_rate(dtype: torch.dtype, device: torch.device, n: int = 2048, reps: int = 5) -> float:
    """GFLOP/s of the best of `reps` n x n matmuls in `dtype` (the machine's practical peak)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        torch.matmul(a, b)
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def forward_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call (convolutions, matmuls and attention, as torch's FlopCounterMode counts them)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops()


def vmhwm_mib() -> float:
    """Peak resident memory of this process so far (VmHWM), in MiB; -1 where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return -1.0


def table(rows: list[list[str]], header: list[str]) -> str:
    """A Markdown table (what docs/performance.md quotes)."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])
