"""Pictures people would rather see than read: schedule plots (and, from train, loss curves and the
other curves of metrics.jsonl: a GAN's two losses and its discriminator's accuracy), and FID against
sampling cost (from sweep).

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
    # log y: cosine's last β (0.999) would otherwise flatten every other curve onto the axis
    ax_b.set(title="β_t (log scale)", xlabel="t", ylabel="β", yscale="log")
    ax_a.set(title="1 - ᾱ_t (noise variance of x_t)", xlabel="t", ylabel="1 - ᾱ", ylim=(-0.02, 1.02))
    for ax in (ax_b, ax_a):
        ax.grid(alpha=0.3)
        ax.legend(frameon=False)
    fig.tight_layout()
    atomic_save(path, lambda tmp: fig.savefig(tmp, format="png"), force)
    plt.close(fig)


def smooth(values: np.ndarray, weight: float) -> np.ndarray:
    """Exponential smoothing with bias correction (as TensorBoard): s_i = Σ w^(i-j)(1-w) v_j / (1-w^(i+1))."""
    out = np.empty(len(values), dtype=np.float64)
    acc = 0.0
    for i, v in enumerate(values):
        acc = weight * acc + (1.0 - weight) * float(v)
        out[i] = acc / (1.0 - weight ** (i + 1))
    return out


def loss_curve(
    steps: list[int] | np.ndarray, losses: list[float] | np.ndarray, path: str | os.PathLike,
    force: bool = False, smoothing: float = 0.9, title: str = "training loss",
) -> None:
    """Training loss against step: the raw values faint, an exponentially smoothed line on top, log y
    (the seed report's loss figure). A healthy DDPM run falls fast, then slowly and noisily."""
    metric_curves(steps, {"loss": losses}, path, title=title, force=force, smoothing=smoothing)


# Fewer points than this are drawn as they are, with markers: a smoothed line through a handful of
# points (an exponential average with weight 0.9 spans about 10) mostly shows the first ones.
MIN_SMOOTHED_POINTS = 20


def metric_curves(
    steps: list[int] | np.ndarray, series: dict[str, list[float] | np.ndarray], path: str | os.PathLike, *,
    title: str, ylabel: str = "loss", log_y: bool = True, ylim: tuple[float, float] | None = None,
    force: bool = False, smoothing: float = 0.9,
) -> None:
    """Metrics against step in one figure (e.g. a GAN's loss_d and loss_g, the seed's figures 15 and
    17): each raw and faint, with its exponentially smoothed line on top in the same colour; with fewer
    than MIN_SMOOTHED_POINTS points, the points themselves, joined, and no smoothed line. The y axis is
    logarithmic when `log_y` and every value is positive."""
    plt = _pyplot()
    fig = curves_figure(steps, series, title=title, ylabel=ylabel, log_y=log_y, ylim=ylim,
                        smoothing=smoothing)
    atomic_save(path, lambda tmp: fig.savefig(tmp, format="png"), force)
    plt.close(fig)


def curves_figure(
    steps: list[int] | np.ndarray, series: dict[str, list[float] | np.ndarray], *, title: str, ylabel: str,
    log_y: bool, ylim: tuple[float, float] | None, smoothing: float,
):
    """The figure of `metric_curves` (a matplotlib Figure; the caller closes it)."""
    plt = _pyplot()
    steps = np.asarray(steps)
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    positive = True
    for i, (name, values) in enumerate(series.items()):
        values = np.asarray(values, dtype=np.float64)
        positive = positive and bool(np.all(values > 0))
        one = len(series) == 1  # then the legend says which line is which, not which metric
        if len(values) < MIN_SMOOTHED_POINTS:
            ax.plot(steps, values, color=f"C{i}", linewidth=1.2, marker="o", markersize=3, label=name)
            continue
        ax.plot(steps, values, color=f"C{i}", alpha=0.3, linewidth=0.8, label=name if one else None)
        label = f"smoothed ({smoothing})" if one else name
        ax.plot(steps, smooth(values, smoothing), color=f"C{i}", linewidth=1.8, label=label)
    if log_y and positive:
        ax.set_yscale("log")
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set(title=title, xlabel="step", ylabel=ylabel)
    ax.grid(alpha=0.3, which="both")
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig


def fid_vs_cost(rows: list[dict], path: str | os.PathLike, force: bool = False, title: str = "") -> None:
    """FID against network calls per image (log x), one line per sampler (per sampler and guidance where
    rows have a "curve"), with each score's interval
    as an error bar: the `dtools sweep` picture. Each row needs sampler, nfe, fid and, for the bars,
    fid_low and fid_high."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    curve = lambda r: r.get("curve", r["sampler"])  # noqa: E731  (a sampler, or a sampler and its guidance)
    for sampler in dict.fromkeys(curve(r) for r in rows):
        mine = sorted((r for r in rows if curve(r) == sampler), key=lambda r: r["nfe"])
        x = np.array([r["nfe"] for r in mine])
        y = np.array([r["fid"] for r in mine])
        line = ax.plot(x, y, marker="o", label=sampler)[0]
        if all("fid_low" in r for r in mine):
            err = np.array([[r["fid"] - r["fid_low"] for r in mine],
                            [r["fid_high"] - r["fid"] for r in mine]])
            ax.errorbar(x, y, yerr=np.clip(err, 0, None), fmt="none", ecolor=line.get_color(), capsize=3)
        for r in mine:
            ax.annotate(str(r["steps"]), (r["nfe"], r["fid"]), textcoords="offset points", xytext=(4, 4),
                        fontsize=8, color=line.get_color())
    ax.set_xscale("log")
    ticks = sorted({r["nfe"] for r in rows})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.xaxis.set_minor_formatter(plt.NullFormatter())
    ax.set(xlabel="network calls per image (log scale)", ylabel="FID (lower is better)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(frameon=False, title="sampler (labels: steps)", fontsize=8)
    fig.tight_layout()
    atomic_save(path, lambda tmp: fig.savefig(tmp, format="png"), force)
    plt.close(fig)


def fid_vs_ema_length(rows: list[dict], path: str | os.PathLike, chosen: float, force: bool = False,
                      title: str = "") -> None:
    """FID against the EMA's length (σ_rel), each score with its interval, the chosen one marked: the
    `dtools ema --choose` picture. Each row needs ema_length, fid, fid_low and fid_high."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    mine = sorted(rows, key=lambda r: r["ema_length"])
    x = np.array([r["ema_length"] for r in mine])
    y = np.array([r["fid"] for r in mine])
    err = np.array([[r["fid"] - r["fid_low"] for r in mine], [r["fid_high"] - r["fid"] for r in mine]])
    line = ax.plot(x, y, marker="o")[0]
    ax.errorbar(x, y, yerr=np.clip(err, 0, None), fmt="none", ecolor=line.get_color(), capsize=3)
    best = next(r for r in mine if r["ema_length"] == chosen)
    ax.plot([chosen], [best["fid"]], marker="*", markersize=14, color="tab:red", linestyle="none",
            label=f"chosen: {chosen:g}")
    ax.set(xlabel="EMA length σ_rel (a fraction of the run)", ylabel="FID (lower is better)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    fig.tight_layout()
    atomic_save(path, lambda tmp: fig.savefig(tmp, format="png"), force)
    plt.close(fig)
