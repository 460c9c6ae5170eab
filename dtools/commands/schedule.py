"""`dtools schedule`: make, inspect and plot noise schedules (float64 `.npy` of betas [T])."""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer

from dtools.commands import options as opt
from dtools.errors import DtoolsError
from dtools.fileio import check_writable, is_stdio, write_npy
from dtools.schedule_io import load_schedule
from dtools.schedules import SCHEDULES, summarize

_NAMES = ", ".join(SCHEDULES)


def schedule(
    names: list[str] = typer.Argument(
        ..., metavar="NAME|FILE", help=f"Schedule names ({_NAMES}) or .npy schedule files ('-' = stdin)."
    ),
    timesteps: int = opt.timesteps(),
    beta_start: float = typer.Option(
        None, "--beta-start", show_default="the schedule's", help="First β (linear, sigmoid, scaled-linear)."
    ),
    beta_end: float = typer.Option(
        None, "--beta-end", show_default="the schedule's", help="Last β (linear, sigmoid, scaled-linear)."
    ),
    s: float = typer.Option(0.008, "--s", help="Offset s of the cosine schedule."),
    max_beta: float = typer.Option(
        None, "--max-beta", show_default="no clipping",
        help="Clip β at this value, FILEs too (the seed report clips at 0.02; the cosine paper at 0.999).",
    ),
    zero_terminal_snr: bool = typer.Option(
        False, "--zero-terminal-snr",
        help="Rescale so ᾱ_T = 0 (Lin et al. 2023), also FILEs; train with --param v.",
    ),
    output: str = opt.output("Write the .npy here ('-' = stdout)."),
    plot: Path = typer.Option(
        None, "--plot", metavar="FILE", show_default="none",
        help="Draw β_t and 1-ᾱ_t of every NAME into this PNG.",
    ),
    summary: bool = typer.Option(
        False, "--summary", help="Print T, β range, ᾱ_T and terminal SNR of each on stdout (not the .npy)."
    ),
    as_json: bool = typer.Option(
        False, "--json", help="With --summary: print JSON lines instead of a table."
    ),
    force: bool = opt.force(),
) -> None:
    """Make a noise schedule (betas, float64 [T]) as .npy, or plot and summarize schedules.

    \b
    Examples:
      dtools schedule cosine -T 1000 > beta.npy
      dtools schedule linear --beta-end 0.02 -T 500 -o linear500.npy
      dtools schedule linear cosine sigmoid -T 1000 --plot schedules.png
      dtools schedule beta.npy --summary
    """
    kwargs = dict(
        T=timesteps, beta_start=beta_start, beta_end=beta_end, s=s, max_beta=max_beta,
        zero_terminal_snr=zero_terminal_snr,
    )
    scheds = {}
    for spec in names:
        label = spec if spec in SCHEDULES else "stdin" if is_stdio(spec) else Path(spec).stem
        scheds[label] = load_schedule(spec, **kwargs)
    if plot is not None:
        check_writable(plot, force)  # before matplotlib's import and drawing, which take seconds
        from dtools.plots import schedule_plot

        schedule_plot(scheds, plot, force)
        typer.echo(f"wrote {plot}", err=True)
    if summary:
        _print_summary(scheds, as_json)
    if plot is None and not summary or output is not None:
        if len(scheds) != 1:
            raise DtoolsError("a .npy holds one schedule: give one NAME, or use --plot/--summary for several")
        write_npy(next(iter(scheds.values())), output, force)


def _print_summary(scheds: dict, as_json: bool) -> None:
    rows = {name: summarize(b) for name, b in scheds.items()}
    if as_json:
        for name, row in rows.items():
            # strict JSON has no -Infinity: a zero-terminal-SNR schedule's snr_T_db becomes null
            row = {k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in row.items()}
            typer.echo(json.dumps({"name": name, **row}, allow_nan=False))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("schedule", "T", "β first", "β last", "β max", "ᾱ_T", "SNR_T (dB)", "t at ᾱ<0.5")
    for name, r in rows.items():
        table.add_row(
            name, str(r["T"]), f"{r['beta_first']:.3g}", f"{r['beta_last']:.3g}", f"{r['beta_max']:.3g}",
            f"{r['alpha_bar_T']:.3g}", f"{r['snr_T_db']:.1f}", str(r["steps_half_signal"] or "never"),
        )
    Console(soft_wrap=True).print(table)
