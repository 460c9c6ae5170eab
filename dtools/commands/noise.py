"""`dtools noise`: the forward process q(x_t | x_0) made visible, as a uint8 .npy batch for `dtools grid`."""

from __future__ import annotations

import shlex
from pathlib import Path

import typer

from dtools.commands import options as opt
from dtools.errors import DtoolsError
from dtools.fileio import is_stdio

# Row labels are suggested only while the grid stays readable.
_MAX_LABELLED_ROWS = 24


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def noise(
    sources: list[str] = typer.Argument(
        None, metavar="SOURCE", help="Image files, folders, .npy batches [N,H,W,C], or '-' (stdin)."
    ),
    betas: list[str] = opt.beta(
        "A schedule: a name (linear, cosine, sigmoid, scaled-linear) or a .npy of betas. Repeatable: one "
        "row per schedule.", default=...,
    ),
    timesteps: str = typer.Option(
        "0,50,100,250,500,999", "-t", "--t", metavar="T,T,...",
        help="0-based indices t = 0..T-1 (t gives x_{t+1}; 999 is x_T at T=1000), or x0 for the clean image.",
    ),
    T: int = opt.timesteps("T of the schedules given by name."),
    seed: int = opt.seed(help="Seed of ε (image i draws from (seed, i))."),
    limit: int = opt.limit("Use only the first N source images.", old=("-n",)),
    output: str = opt.output("Write the .npy here ('-' = stdout)."),
    force: bool = opt.force(),
) -> None:
    """Noise images with q(x_t|x_0) under each schedule at each t: one row per schedule, one column per t.

    Writes a uint8 .npy batch [N·S·K, H, W, C] ordered image, then schedule, then timestep; the same ε
    serves every schedule and t, so rows differ only by schedule. stderr names the `dtools grid` options
    that lay it out (--nrow K, one row label per schedule).

    \b
    Examples:
      dtools noise face.png --beta linear --beta cosine -t 0,50,100,250,500,999 \\
          | dtools grid --nrow 6 --row-labels linear,cosine --scale 2 -o noising.png
      dtools schedule sigmoid -T 1000 > sigmoid.npy
      dtools noise data/000042.png -b linear -b sigmoid.npy -b cosine -t x0,100,300,999 -o noised.npy
      dtools noise data/ --limit 4 -b cosine -t 0,250,500,750,999 | dtools grid --nrow 5 -o emoji.png
    """
    from dtools.fileio import refuse_terminal

    # Everything that can be refused without torch is refused first (before the slow import).
    if not sources:
        raise DtoolsError("no image sources given: pass image files, folders, .npy batches, or - for stdin")
    if sum(is_stdio(s) for s in [*sources, *betas]) > 1:
        raise DtoolsError("stdin ('-') can feed only one input: write the others to files first")
    refuse_terminal(
        output,
        "refusing to write binary .npy data to a terminal; pipe it (`| dtools grid --nrow K -o out.png`) "
        "or pass -o FILE",
    )
    if not is_stdio(output) and Path(output).exists() and not force:
        raise DtoolsError(f"{output} already exists; pass --force to overwrite it")

    from dtools.fileio import write_npy
    from dtools.noise import noise_images, parse_timesteps, schedule_label, timestep_label
    from dtools.schedule_io import load_schedule

    ts = parse_timesteps(timesteps)
    scheds = [load_schedule(b, T=T) for b in betas]
    names = [schedule_label(spec, b) for spec, b in zip(betas, scheds, strict=True)]
    from dtools.images import read_images

    images = read_images(sources, limit=limit)  # (N, H, W, C) uint8; stops reading at --limit
    batch = noise_images(images, scheds, ts, seed=seed, names=names)
    write_npy(batch, output, force)

    n, s, k = images.shape[0], len(scheds), len(ts)
    hint = ["dtools", "grid", "--nrow", str(k)]
    if n * s <= _MAX_LABELLED_ROWS and all("," not in x for x in names):
        hint += ["--row-labels", ",".join(names * n)]
    typer.echo(
        f"noise: {_count(batch.shape[0], 'image')} = {_count(n, 'image')} x {_count(s, 'schedule')} "
        f"x {_count(k, 'timestep')} ({','.join(timestep_label(t) for t in ts)}), seed {seed}; "
        f"lay out with: {shlex.join(hint)} -o noising.png",
        err=True,
    )
