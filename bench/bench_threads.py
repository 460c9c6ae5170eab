"""CPU thread policy of `dtools train` and `dtools sample`: idle, and with another process on the cores.

    python bench/bench_threads.py                          # every policy x fp32/bf16 x idle/burner/train
    python bench/bench_threads.py --loads burner --precisions bf16 --seconds 20
    python bench/bench_threads.py --toy                    # seconds: checks that it runs

Each measurement is a fresh process (OpenMP reads its wait policy once) running dtools' own Trainer
(cpu32 at 32x32, batch 16, the default training) for --seconds, or the sampling call of `dtools
sample` (Runtime.model_fn, batch 64, no grad) with --what sample. It reports images per second over the
steps after the first 5 (warm-up). Policies (environment of the measured process):

    passive-2   OMP_WAIT_POLICY=PASSIVE, OMP_NUM_THREADS=2 (sleeping threads; what dtools 0.1 set)
    spin-2      OMP_NUM_THREADS=2 (libgomp's default: spin a while, then sleep)
    1           OMP_NUM_THREADS=1
    spin-guard  neither set: all threads, and dtools.runtime.ThreadGuard picks 2 or 1 from step times
    passive-guard  OMP_WAIT_POLICY=PASSIVE and the guard

Loads: idle; burner (`python -c 'while 1: pass'`, one core busy); train (a second training process of
the same policy, started 5 s before). Take the exclusive CPU lock: the loads are the only other work.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

POLICIES = {
    "passive-2": {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "2"},
    "spin-2": {"OMP_NUM_THREADS": "2"},
    "1": {"OMP_NUM_THREADS": "1"},
    "spin-guard": {},
    "passive-guard": {"OMP_WAIT_POLICY": "PASSIVE"},
}
BURNER = "while 1: pass"


def child(what: str, precision: str, seconds: float, toy: bool) -> None:
    """Runs in the measured process: train or sample for `seconds`, print the rate as JSON."""
    import numpy as np
    import torch

    from dtools import train as training
    from dtools.schedules import make_schedule

    size, batch = (8, 4) if toy else (32, 16)
    with tempfile.TemporaryDirectory() as d:
        data = Path(d) / "data.npy"
        np.save(data, np.random.default_rng(0).integers(0, 256, (512, size, size, 3), dtype=np.uint8))
        opts = {"preset": "cpu32" if not toy else "cpu16", "batch_size": batch, "sample_every": 0,
                "save_every": 10**6, "log_every": 1, "precision": precision, "max_minutes": seconds / 60,
                "max_steps": 10**6}
        if toy:
            opts.update(base_channels=8, channel_mult=(1, 2), attention_resolutions=(4,))
        cfg = training.new_config(str(data), str(Path(d) / "run"), "cosine", make_schedule("cosine", 1000),
                                  (512, size, size, 3), opts)
        if what == "train":
            result = training.train(cfg, progress=False, log=lambda m: None)
            recs = result.metrics[5:] or result.metrics
            span = recs[-1]["elapsed"] - recs[0]["elapsed"]  # the steps after the first record's
            rate = (len(recs) - 1) * batch / span if len(recs) > 1 and span > 0 else recs[-1]["img_per_s"]
            step_ms = [1e3 * batch / r["img_per_s"] for r in recs if r["img_per_s"]]
            out = {"img_s": rate, "steps": result.step, "median_step_ms": statistics.median(step_ms)}
        else:
            trainer = training.Trainer(cfg, force=True, log=lambda m: None, progress=False)
            trainer.setup()
            method = getattr(trainer, "method", trainer)
            fn = trainer.rt.model_fn(method.ema.module)
            x, t = torch.randn(64, 3, size, size), torch.randint(0, 1000, (64,))
            times, end = [], time.perf_counter() + seconds
            with torch.no_grad():
                while time.perf_counter() < end or len(times) < 3:
                    t0 = time.perf_counter()
                    fn(x, t)
                    times.append(time.perf_counter() - t0)
            kept = times[2:] or times
            out = {"img_s": 64 / statistics.median(kept), "steps": len(times),
                   "median_step_ms": 1e3 * statistics.median(kept)}
    print(json.dumps(out))


def measure(policy: str, precision: str, load: str, args) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env.update(POLICIES[policy])
    cmd = [sys.executable, __file__, "--child", args.what, precision, str(args.seconds)]
    cmd += ["--toy"] if args.toy else []
    others = []
    if load == "burner":
        others.append(subprocess.Popen([sys.executable, "-c", BURNER]))
    elif load == "train":  # a second training run of the same policy, long enough to outlast the first
        longer = [sys.executable, __file__, "--child", "train", precision, str(args.seconds + 30)]
        others.append(subprocess.Popen(longer + (["--toy"] if args.toy else []), env=env,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(2 if args.toy else 5)
    try:
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    finally:
        for p in others:
            p.kill()
            p.wait()
    try:
        return json.loads(res.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        sys.exit(f"{policy} {precision} {load} failed:\n{res.stderr[-2000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--what", default="train", choices=["train", "sample"])
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--loads", default="idle,burner,train")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--toy", action="store_true", help="a tiny network, 3 s each: checks that it runs")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child[0], args.child[1], float(args.child[2]), args.toy)
    if args.toy:
        args.seconds = 3.0
    policies, precisions, loads = (a.split(",") for a in (args.policies, args.precisions, args.loads))
    rows = []
    for precision in precisions:
        for policy in policies:
            row = [f"{precision} {policy}"]
            for load in loads:
                r = measure(policy, precision, load, args)
                row.append(f"{r['img_s']:.0f} ({r['median_step_ms']:.0f} ms)")
            rows.append(row)
            print(" | ".join(row), file=sys.stderr, flush=True)
    import benchlib

    unit = "img/s (median step)" if args.what == "train" else "image-steps/s (median call of 64)"
    print(f"\n{args.what}, {unit}, {args.seconds:.0f} s per cell, a fresh process each")
    print(benchlib.table(rows, ["precision, policy", *loads]))


if __name__ == "__main__":
    main()
