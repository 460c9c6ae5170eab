"""`dtools interpolate`: frames between two images or two seeds, by slerp of their x_T."""

from __future__ import annotations

from pathlib import Path

import typer

from dtools.commands import options as opt
from dtools.sampler_specs import SAMPLERS


def interpolate(
    checkpoint: Path = typer.Argument(..., metavar="CKPT", help=opt.CHECKPOINT_HELP),
    sources: list[str] = typer.Argument(
        None, metavar="IMAGES", help="The two end images A B (files, or one folder / .npy holding two), "
        "inverted to their x_T; or none, with --seeds."
    ),
    seeds: str = opt.option(
        None, "--seeds", metavar="S,T", show_default="off",
        help="The two ends are seeds instead: the x_T of image 0 of `dtools sample --seed S` and --seed T.",
    ),
    n: int = opt.num(8, "Frames, both ends included.", min=2),
    sampler: str = opt.sampler(tuple(SAMPLERS), "Decodes every frame; a deterministic one: "
                               f"{', '.join(s.name for s in SAMPLERS.values() if s.is_deterministic(0.0))}.",
                               show_default="ddim"),
    steps: int = opt.steps("Timesteps of the chain, 2..T, for the inversion and the decoding.",
                           show_default="50"),
    spacing: str = opt.spacing(),
    refine: int = opt.refine(),
    clip: bool = opt.clip(),
    classes: list[str] = opt.classes(
        "Class-conditional models: the class of every frame, by name or index ('none' = unconditional).",
        show_default="none (the null class)",
    ),
    resize: bool = opt.resize(),
    seed: int = opt.seed(help="Seed of any noise the decoding draws (none for the deterministic samplers)."),
    batch_size: int = opt.batch_size(),
    weights: str = opt.weights(),
    output: str = opt.output(
        "A .npy file, a folder for PNGs 000000.png..., or a .png file for one strip of them ('-' = stdout).",
        metavar="PATH",
    ),
    force: bool = opt.force(),
    device: str = opt.device(),
    precision: str = opt.precision(opt.SAMPLING_PRECISION_HELP),
    compile_model: bool = opt.compile_model(),
) -> None:
    """Walk between two images (inverted by DDIM) or two seeds: -n frames of slerp between their x_T.

    Each end is an x_T: an image's inversion (`dtools invert`) or a seed's noise; the frames lie on
    the great circle between the two (spherical interpolation keeps the norm a Gaussian x_T has,
    where a straight line would wash the middle out), and each is decoded as
    `dtools sample --from-latents` does. The first and last frames are the two ends' own images.

    \b
    Examples:
      dtools interpolate runs/emoji a.png b.png -n 8 -o walk.png
      dtools interpolate runs/emoji --seeds 3,7 -n 10 | dtools grid --nrow 10 -o seeds.png
      dtools interpolate runs/emoji pair.npy -n 16 -o frames/
    """
    from dtools.edit import InterpolateConfig, parse_seeds, read_ends, run_interpolate
    from dtools.sample import LATENT_SAMPLER, SampleConfig, Sink

    sampling = SampleConfig(
        checkpoint=checkpoint, n=n, sampler=sampler or LATENT_SAMPLER, steps=steps, seed=seed,
        spacing=spacing, batch_size=batch_size, weights=weights, clip=clip, device=device,
        precision=precision, compile=compile_model, classes=tuple(classes) if classes else None,
    )
    cfg = InterpolateConfig(sampling, tuple(sources or ()), None if seeds is None else parse_seeds(seeds),
                            resize=resize, refine=refine)
    cfg.check()
    ends = read_ends(cfg)
    # refuse a bad target before any network call; -o DIR is locked while it is written
    with Sink(output, n, force, nrow=n) as sink:
        run_interpolate(cfg, ends, sink)
        sink.close()
