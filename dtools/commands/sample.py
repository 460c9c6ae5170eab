"""`dtools sample`: draw images from a trained model checkpoint with a chosen sampler."""

from __future__ import annotations

from pathlib import Path

import typer

from dtools.commands import options as opt

# Kept in step with dtools.samplers.SAMPLERS and dtools.diffusion (tests/cli/test_sample.py checks);
# listed here so that `dtools --help` does not import torch.
SAMPLER_HELP = {
    "ddpm": "ancestral, 1 call/step, the seed's sampler (default --steps T)",
    "ddim": "DDIM with --eta, 1 call/step",
    "dpm++2m": "DPM-Solver++(2M), 1 call/step, good at 10-50 steps",
    "heun": "Heun (Karras et al.), 2 calls/step",
}
VARIANCES = ("beta", "posterior")  # dtools.diffusion.VARIANCE_FIELDS
SPACINGS = ("trailing", "linspace", "leading")  # dtools.diffusion.SPACING


def sample(
    checkpoint: Path = typer.Argument(
        ..., metavar="CKPT", help="Model checkpoint written by `dtools train` (RUN/model.safetensors), or "
        "the run folder RUN itself."
    ),
    n: int = opt.num(),
    sampler: str = opt.sampler(
        tuple(SAMPLER_HELP), "; ".join(f"{k}: {v}" for k, v in SAMPLER_HELP.items()) + ".",
        show_default="dpm++2m",
    ),
    steps: int = opt.steps(
        "Timesteps visited, 2..T: network calls per image (heun: 2*steps-2).",
        show_default="T for ddpm, 20 otherwise",
    ),
    seed: int = opt.seed(help="Image i depends only on (seed, i), never on --batch-size."),
    eta: float = typer.Option(
        None, "--eta", show_default="0",
        help="ddim only: noise scale, 0 = deterministic, 1 = ddpm's posterior variance.",
    ),
    variance: str = opt.choice(
        None, "--variance", choices=VARIANCES, show_default="posterior",
        help="ddpm only: reverse variance beta (β_t) or posterior (β̃_t).",
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
    """
    from dtools.sample import SampleConfig, Sink, run

    cfg = SampleConfig(
        checkpoint=checkpoint, n=n, sampler=sampler, steps=steps, seed=seed, eta=eta, variance=variance,
        spacing=spacing, batch_size=batch_size, weights=weights, clip=clip, trajectory=trajectory,
        device=device, precision=precision, compile=compile_model,
    )
    cfg.check()
    sink = Sink(output, cfg.count, force, nrow=trajectory)  # refuse a bad target before any work
    run(cfg, sink)
    sink.close()
