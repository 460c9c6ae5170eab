"""Pictures people would rather see than read: schedule plots (and, from train, loss curves).

matplotlib with the non-interactive Agg backend; files are written atomically.
"""

from __future__ import annotations

import os

import numpy as np

from dtools.fileio import atomic_save


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def schedule_plot(schedules: dict[str, np.ndarray], path: str | os.PathLike, force: bool = False) -> None:
    """β_t and 1-ᾱ_t against t for one or several schedules (the seed report's figures 2 and 3)."""
    plt = _pyplot()
    fig, (ax_b, ax_a) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=120)
    for name, betas in schedules.items():
        t = np.arange(1, betas.shape[0] + 1)
        ax_b.plot(t, betas, label=name)
        ax_a.plot(t, 1.0 - np.cumprod(1.0 - betas), label=name)
    ax_b.set(title="β_t", xlabel="t", ylabel="β")
    ax_a.set(title="1 - ᾱ_t (noise variance of x_t)", xlabel="t", ylabel="1 - ᾱ", ylim=(-0.02, 1.02))
    for ax in (ax_b, ax_a):
        ax.grid(alpha=0.3)
        ax.legend(frameon=False)
    fig.tight_layout()
    atomic_save(path, lambda tmp: fig.savefig(tmp, format="png"), force)
    plt.close(fig)
