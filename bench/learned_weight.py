"""What `dtools train --learned-weight` learned: the weight each timestep's loss got, against Min-SNR-5's.

    python bench/learned_weight.py RUN [RUN ...] -o learned-weight.png

Reads each run's training state (RUN/train-state.safetensors: u's weights, `logvar.*`, and the run's
betas), evaluates u(σ_t) at every t and plots the effective weight on the v-loss, exp(-u(σ_t)) times
the run's base weight (--min-snr-gamma's, with --min-snr-floor), against the Min-SNR-5 weight
min(SNR, 5)/(SNR + 1) that the defaults train with. Both are scaled to a mean of 1 over t, since
only their shape matters to Adam. A picture for docs/quality.md, not a test.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from dtools.diffusion import Schedule, loss_weight
from dtools.train.state import load_state
from dtools.train.uncertainty import LogVariance


def effective_weight(run: Path) -> tuple[np.ndarray, np.ndarray, Schedule]:
    tensors, info = load_state(run / "train-state.safetensors")
    if "logvar.weight" not in tensors:
        raise SystemExit(f"learned_weight: {run} was not trained with --learned-weight")
    s = Schedule.from_betas(np.asarray(info["betas"], dtype=np.float64))
    u_net = LogVariance(s)
    u_net.load_state_dict({"weight": tensors["logvar.weight"], "bias": tensors["logvar.bias"]})
    t = torch.arange(s.T)
    with torch.no_grad():
        u = u_net(t)
    train = info["train"]
    base = loss_weight(s, info["parameterization"], t, train.get("min_snr_gamma"),
                       train.get("min_snr_floor", 0.0))
    return (base * torch.exp(-u)).numpy(), u.numpy(), s


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("-o", "--out", type=Path, required=True)
    args = p.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.8), dpi=120)
    s = None
    for run in args.runs:
        w, u, s = effective_weight(run)
        ax.plot(np.arange(len(w)), w / w.mean(), label=f"learned: {run.name}")
        print(f"{run}: u from {u.min():.2f} to {u.max():.2f}; weight at t=0, T/2, T-1: "
              f"{w[0] / w.mean():.3g}, {w[len(w) // 2] / w.mean():.3g}, {w[-1] / w.mean():.3g}")
    assert s is not None
    t = torch.arange(s.T)
    m = loss_weight(s, "v", t, 5.0).numpy()
    ax.plot(t.numpy(), m / m.mean(), "k--", label="Min-SNR-5 on v (the default)")
    ax.set(xlabel="t", ylabel="weight on the v-loss (mean 1)", yscale="log",
           title="Loss weight per timestep after a 5-minute run")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
