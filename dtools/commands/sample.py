"""`dtools sample`: draw images from a trained model checkpoint with a chosen sampler."""

from __future__ import annotations

from pathlib import Path

import typer

from dtools.commands import options as opt
from dtools.sampler_specs import DEFAULT_SAMPLER, SAMPLERS

# the sampling vocabulary lives in commands/options.py (edit, invert and interpolate share it); these
# names stay here for the tests and scripts that read them from `dtools.commands.sample`
VARIANCES, SPACINGS = opt.VARIANCES, opt.SPACINGS
sampler_help, steps_help, default_steps = opt.sampler_help, opt.steps_help, opt.default_steps


def sample(
    checkpoint: Path = typer.Argument(..., metavar="CKPT", help=opt.CHECKPOINT_HELP),
    n: int = opt.num(),
    sampler: str = opt.sampler(tuple(SAMPLERS), sampler_help(), show_default=DEFAULT_SAMPLER),
    steps: int = opt.steps(steps_help(), show_default=default_steps()),
    seed: int = opt.seed(help="Image i depends only on (seed, i), never on --batch-size."),
    eta: float = opt.eta(),
    variance: str = opt.variance(),
    spacing: str = opt.spacing(),
    batch_size: int = opt.batch_size(old=("-b",)),
    weights: str = opt.weights(),
    output: str = opt.output(
        "A .npy file, a folder for PNGs 000000.png..., or a .png file for one grid of them ('-' = stdout).",
        metavar="PATH",
    ),
    force: bool = opt.force(),
    trajectory: int = typer.Option(
        None, "--trajectory", min=2, metavar="K", show_default="off",
        help="Write K snapshots of x_t and of the predicted x0 along the chain instead of final images: "
        "per image one row of x_t, then one of x0_hat (view with grid --nrow K).",
    ),
    clip: bool = opt.clip(),
    classes: list[str] = opt.classes(
        "Class-conditional models: the class to draw, by name or index (repeat it for several, taken in "
        "turn; 'none' = unconditional)."
    ),
    per_class: int = typer.Option(
        None, "--per-class", min=1, metavar="N", show_default="off",
        help="Class-conditional models: N images of every class, one row per class (sets -n); image j of "
        "each class starts from the same noise.",
    ),
    guidance: float = opt.guidance(
        "1 with a guide (--guide, or an unconditional model's run guide.safetensors beside CKPT), else 0"),
    guidance_interval: str = opt.guidance_interval(),
    guide: Path = opt.guide(),
    from_latents: str = typer.Option(
        None, "--from-latents", metavar="FILE", show_default="drawn from the seeds",
        help="Decode these x_T (a float .npy [N, C, H, W] from `dtools invert`; '-' = stdin) instead of "
        "drawing them: one image each (-n is their number), with a deterministic sampler (by default ddim, "
        "50 steps: the inversion's chain; docs/edit.md).",
    ),
    device: str = opt.device(),
    precision: str = opt.precision(opt.SAMPLING_PRECISION_HELP),
    compile_model: bool = opt.compile_model(),
) -> None:
    """Draw images from a trained checkpoint: a uint8 .npy on stdout, PNGs in -o DIR, or a grid -o X.png.

    The model, its schedule and parameterization come from the checkpoint alone. Defaults: the
    EMA weights, dpm++2m with 20 steps, and for an unconditional model in a run folder of `dtools
    train` autoguidance by the run's early snapshot RUN/guide.safetensors (w=1, 2 network calls per
    step then; --guidance 0 turns it off). `--sampler ddpm` is the seed's exact
    T-step ancestral sampler. A DCGAN or VAE checkpoint (`dtools train --model dcgan|vae`) makes
    each image in one network call from z ~ N(0, I) and refuses the sampler options. Image i is
    the same for a given --seed whatever --batch-size or -n, so a killed `-o DIR` run continues
    where it stopped when the same command is run again.

    \b
    Examples:
      dtools sample runs/emoji/model.safetensors | dtools grid -o samples.png
      dtools sample runs/emoji -n 16 -o samples.png
      dtools sample runs/emoji/model.safetensors -n 16 --sampler ddpm --variance beta -o ddpm/
      dtools sample ckpt.safetensors -n 10000 --steps 50 -o fid-samples/ && dtools fid fid-samples/ data/
      dtools sample ckpt.safetensors -n 4 --sampler ddpm --trajectory 8 | dtools grid --nrow 8 -o chain.png
      dtools sample runs/gan/model.safetensors -n 1000 | dtools fid data/ -
      dtools sample runs/digits --per-class 8 --guidance 2 -o digits.png
      dtools sample runs/digits --class 7 -n 16 | dtools grid -o sevens.png
      dtools sample runs/emoji --guide runs/emoji/guide.safetensors --guidance 1 -o guided/
      dtools invert runs/emoji face.png | dtools sample runs/emoji --from-latents - -o again.png
    """
    from dtools.sample import SampleConfig, Sink, run, sample_record, with_latents

    cfg = SampleConfig(
        checkpoint=checkpoint, n=n, sampler=sampler, steps=steps, seed=seed, eta=eta, variance=variance,
        spacing=spacing, batch_size=batch_size, weights=weights, clip=clip, trajectory=trajectory,
        device=device, precision=precision, compile=compile_model,
        classes=tuple(classes) if classes else None, per_class=per_class, guidance=guidance,
        guidance_interval=guidance_interval, guide=guide, from_latents=from_latents,
    )
    cfg = cfg.with_run_guide()
    cfg.check()
    cfg, latents = with_latents(cfg)
    nrow = trajectory or per_class
    # refuse a bad target before any work; -o DIR: locked, and continued when killed (same options)
    with Sink(output, cfg.count, force, nrow=nrow, record=sample_record(cfg, latents)) as sink:
        run(cfg, sink, latents=latents)
        sink.close()
