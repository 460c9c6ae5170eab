"""`dtools sample`: draw images from a trained model checkpoint with a chosen sampler."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import typer

from dtools.commands import options as opt
from dtools.sampler_specs import DEFAULT_SAMPLER, SAMPLERS, option_default, takers

# Kept in step with dtools.diffusion (tests/cli/test_options.py checks); listed here so that
# `dtools --help` does not import torch. The samplers' facts come from their specs (no torch either).
VARIANCES = ("beta", "posterior")  # dtools.diffusion.VARIANCE_FIELDS
SPACINGS = ("trailing", "linspace", "leading")  # dtools.diffusion.SPACING


def sampler_help() -> str:
    """--sampler's help: each sampler's help line."""
    return "; ".join(f"{s.name}: {s.help}" for s in SAMPLERS.values()) + "."


def steps_help() -> str:
    """--steps' help, naming the samplers whose network calls are not one per step."""
    odd = [f"{s.name}: {s.nfe_formula()}" for s in SAMPLERS.values() if s.nfe_formula() != "steps"]
    return "Timesteps visited, 2..T: network calls per image" + (f" ({'; '.join(odd)})" if odd else "") + "."


def default_steps() -> str:
    """--steps' default as help shows it: 'T for ddpm, 20 otherwise'."""
    usual = Counter(s.default_steps for s in SAMPLERS.values()).most_common(1)[0][0]
    others = [f"{s.default_steps} for {s.name}" for s in SAMPLERS.values() if s.default_steps != usual]
    return ", ".join([*others, f"{usual} otherwise"]) if others else str(usual)


def sample(
    checkpoint: Path = typer.Argument(
        ..., metavar="CKPT", help="Model checkpoint written by `dtools train` (RUN/model.safetensors), or "
        "the run folder RUN itself."
    ),
    n: int = opt.num(),
    sampler: str = opt.sampler(tuple(SAMPLERS), sampler_help(), show_default=DEFAULT_SAMPLER),
    steps: int = opt.steps(steps_help(), show_default=default_steps()),
    seed: int = opt.seed(help="Image i depends only on (seed, i), never on --batch-size."),
    eta: float = typer.Option(
        None, "--eta", show_default=f"{option_default('eta'):g}",
        help=f"{takers('eta')} only: noise scale, 0 = deterministic, 1 = ddpm's posterior variance.",
    ),
    variance: str = opt.choice(
        None, "--variance", choices=VARIANCES, show_default=option_default("variance"),
        help=f"{takers('variance')} only: reverse variance beta (β_t) or posterior (β̃_t).",
    ),
    spacing: str = opt.choice(
        None, "--spacing", choices=SPACINGS, show_default="trailing",
        help="Which timesteps a --steps < T chain keeps: trailing (starts at T-1), linspace (both ends), "
        "leading (DDIM's original).",
    ),
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
    clip: bool = typer.Option(
        None, "--clip/--no-clip", help="Clip each predicted x0 to [-1, 1].", show_default="clip"
    ),
    classes: list[str] = typer.Option(
        None, "--class", metavar="C", show_default="every class in turn",
        help="Class-conditional models: the class to draw, by name or index (repeat it for several, "
        "taken in turn; 'none' = unconditional).",
    ),
    per_class: int = typer.Option(
        None, "--per-class", min=1, metavar="N", show_default="off",
        help="Class-conditional models: N images of every class, one row per class (sets -n); image j of "
        "each class starts from the same noise.",
    ),
    guidance: float = typer.Option(
        None, "--guidance", min=0.0, metavar="W", show_default="0: none",
        help="Guidance weight: D + W (D - D_weak), from the null class (classifier-free) or from --guide "
        "(autoguidance); network calls grow where it applies (docs/guidance.md).",
    ),
    guidance_interval: str = typer.Option(
        None, "--guidance-interval", metavar="LO,HI", show_default="every step",
        help="Guide only where the noise level σ_t = √((1-ᾱ)/ᾱ) lies in (LO, HI], e.g. 0.28,5.42; HI may be "
        "inf.",
    ),
    guide: Path = typer.Option(
        None, "--guide", metavar="CKPT", show_default="the model's null class",
        help="Autoguidance: a weaker model of the same data and schedule (e.g. RUN/guide.safetensors, the "
        "early snapshot every run keeps) to guide with.",
    ),
    device: str = opt.device(),
    precision: str = opt.precision(
        "auto: bf16 on a CUDA GPU (fp16 on older ones) and on a CPU with AMX, else fp32 "
        "(docs/performance.md)."
    ),
    compile_model: bool = typer.Option(
        None, "--compile/--no-compile", help="torch.compile the network.",
        show_default="on for CUDA, off on the CPU",
    ),
) -> None:
    """Draw images from a trained checkpoint: a uint8 .npy on stdout, PNGs in -o DIR, or a grid -o X.png.

    The model, its schedule and parameterization come from the checkpoint alone. Defaults: the
    EMA weights, dpm++2m with 20 network calls per image. `--sampler ddpm` is the seed's exact
    T-step ancestral sampler. A DCGAN or VAE checkpoint (`dtools train --model dcgan|vae`) makes
    each image in one network call from z ~ N(0, I) and refuses the sampler options. Image i is
    the same for a given --seed whatever --batch-size or -n.

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
    """
    from dtools.sample import SampleConfig, Sink, run

    cfg = SampleConfig(
        checkpoint=checkpoint, n=n, sampler=sampler, steps=steps, seed=seed, eta=eta, variance=variance,
        spacing=spacing, batch_size=batch_size, weights=weights, clip=clip, trajectory=trajectory,
        device=device, precision=precision, compile=compile_model,
        classes=tuple(classes) if classes else None, per_class=per_class, guidance=guidance,
        guidance_interval=guidance_interval, guide=guide,
    )
    cfg.check()
    nrow = trajectory or per_class
    sink = Sink(output, cfg.count, force, nrow=nrow)  # refuse a bad target before any work
    run(cfg, sink)
    sink.close()
