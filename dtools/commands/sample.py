"""`dtools sample`: draw images from a trained model checkpoint with a chosen sampler."""

from __future__ import annotations

from pathlib import Path

import typer

# Kept in step with dtools.samplers.SAMPLERS and dtools.diffusion (tests/cli/test_sample.py checks);
# listed here so that `dtools --help` does not import torch.
SAMPLER_HELP = {
    "ddpm": "ancestral, 1 call/step, the seed's sampler (default --steps T)",
    "ddim": "DDIM with --eta, 1 call/step",
    "dpm++2m": "DPM-Solver++(2M), 1 call/step, good at 10-50 steps",
    "heun": "Heun (Karras et al.), 2 calls/step",
}


def sample(
    checkpoint: Path = typer.Argument(
        ..., metavar="CKPT", help="Model checkpoint written by `dtools train` (RUN/model.safetensors), or "
        "the run folder RUN itself."
    ),
    n: int = typer.Option(64, "-n", "--num", min=1, help="Number of images."),
    sampler: str = typer.Option(
        None, "--sampler", "-s",
        help="; ".join(f"{k}: {v}" for k, v in SAMPLER_HELP.items()) + ". [default: dpm++2m]"
    ),
    steps: int = typer.Option(
        None, "--steps", help="Timesteps visited, 2..T: network calls per image (heun: 2*steps-2). "
        "[default: T for ddpm, 20 otherwise]"
    ),
    seed: int = typer.Option(0, "--seed", help="Image i depends only on (seed, i), never on --batch-size."),
    eta: float = typer.Option(
        None, "--eta", help="ddim only: noise scale, 0 = deterministic, 1 = ddpm's posterior variance. "
        "[default: 0]"
    ),
    variance: str = typer.Option(
        None, "--variance", help="ddpm only: reverse variance beta (β_t) or posterior (β̃_t). "
        "[default: posterior]"
    ),
    spacing: str = typer.Option(
        None, "--spacing", help="Which timesteps a --steps < T chain keeps: trailing (starts at T-1), "
        "linspace (both ends), leading (DDIM's original). [default: trailing]"
    ),
    batch_size: int = typer.Option(64, "--batch-size", "-b", min=1, help="Images per network call (memory)."),
    weights: str = typer.Option("ema", "--weights", help="ema, or raw: the online weights, without EMA."),
    output: str = typer.Option(
        None, "-o", "--output", help="A folder for PNGs 000000.png..., or a .npy file. "
        "[default: .npy to stdout]"
    ),
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite existing output files."),
    trajectory: int = typer.Option(
        None, "--trajectory", min=2, help="Write K snapshots of x_t and of the predicted x0 along the chain "
        "instead of final images: per image one row of x_t, then one of x0_hat (view with grid --nrow K)."
    ),
    clip: bool = typer.Option(
        None, "--clip/--no-clip", help="Clip each predicted x0 to [-1, 1]. [default: on]"
    ),
    device: str = typer.Option("auto", "--device", help="auto (cuda, then mps, then cpu), cpu, cuda, mps."),
    precision: str = typer.Option(
        "auto", "--precision", help="auto, fp32, bf16, fp16. auto: bf16 on a CUDA GPU (fp16 on older ones) "
        "and on a CPU with AMX, else fp32 (the rule of `dtools train`, docs/performance.md)."
    ),
    compile_model: bool = typer.Option(
        None, "--compile/--no-compile", help="torch.compile the network. "
        "[default: on for CUDA, off on the CPU]"
    ),
) -> None:
    """Draw images from a trained checkpoint: uint8 .npy [N,H,W,C] on stdout, or PNGs with -o DIR.

    The model, its schedule and parameterization come from the checkpoint alone. Defaults: the
    EMA weights, dpm++2m with 20 network calls per image. `--sampler ddpm` is the seed's exact
    T-step ancestral sampler. A DCGAN or VAE checkpoint (`dtools train --model dcgan|vae`) makes
    each image in one network call from z ~ N(0, I) and refuses the sampler options. Image i is
    the same for a given --seed whatever --batch-size or -n.

    \b
    Examples:
      dtools sample runs/emoji/model.safetensors | dtools grid -o samples.png
      dtools sample runs/emoji -n 16 | dtools grid -o samples.png
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
    sink = Sink(output, cfg.count, force)  # refuse a bad target before any work
    run(cfg, sink)
    sink.close()
