"""Step time of `dtools train` on several CPU processes (DistributedDataParallel, gloo) against one.

    flock -x /tmp/dtools-bench.lock python bench/bench_ddp.py            # 2 processes, cpu32, batch 16
    python bench/bench_ddp.py --nproc 4 --size 16 --batch 64 --repeats 5

Runs, alternating, --repeats times each: one process with --nproc threads, one process with one
thread, and `--nproc N` processes with one thread each (the same global --batch); all train the same
preset on the same twemoji images for --steps steps. A run's step time is the median over its
metrics.jsonl windows (of --log-every steps) after the first; the table shows the median over the
repeats and the ratio to one process with N threads. This is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def run(data: Path, out: Path, args: argparse.Namespace, nproc: int, threads: int) -> float:
    """One training run; its median seconds per step."""
    cmd = [sys.executable, "-m", "dtools", "train", str(data), "--beta", "cosine", "-o", str(out),
           "--batch", str(args.batch), "--max-steps", str(args.steps), "--log-every", str(args.log_every),
           "--save-every", str(args.steps), "--sample-every", "0", "--nproc", str(nproc)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(args.batch / r["img_per_s"] for r in records[1:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    n = args.nproc
    setups = {f"1 process x {n} threads": (1, n), "1 process x 1 thread": (1, 1),
              f"{n} processes x 1 thread": (n, 1)}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        prep = ["prep", "twemoji", str(data), "--size", str(args.size), "--limit", "256"]
        subprocess.run([sys.executable, "-m", "dtools", *prep], check=True, capture_output=True)
        times: dict[str, list[float]] = {name: [] for name in setups}
        for i in range(args.repeats):
            for name, (nproc, threads) in setups.items():
                times[name].append(run(data, Path(tmp) / f"run{i}-{nproc}-{threads}", args, nproc, threads))
    base = statistics.median(times[f"1 process x {n} threads"])
    print(f"{args.size}x{args.size} images, global batch {args.batch}, {args.steps} steps, "
          f"{args.repeats} repeats (median s/step)")
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"  {name:24s} {t * 1000:7.1f} ms/step  {args.batch / t:6.1f} img/s  x{base / t:.2f} "
              f"({', '.join(f'{x * 1000:.0f}' for x in ts)} ms)")


if __name__ == "__main__":
    main()
