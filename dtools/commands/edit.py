"""`dtools edit`: SDEdit and inpainting with a trained diffusion model."""

from __future__ import annotations

from pathlib import Path

import typer

from dtools.commands import options as opt
from dtools.sampler_specs import DEFAULT_SAMPLER, SAMPLERS


def edit(
    checkpoint: Path = typer.Argument(..., metavar="CKPT", help=opt.CHECKPOINT_HELP),
    sources: list[str] = typer.Argument(
        None, metavar="IMAGES", help="Image files, folders, .npy batches [N,H,W,C], or '-' (stdin)."
    ),
    strength: float = opt.option(
        None, "--strength", metavar="S", show_default="0.5; 1 with --mask",
        help="How far to noise each input before denoising it, in [0, 1]: 0 = unchanged, 1 = pure noise "
        "(a new sample); the chain starts at its timestep nearest S·T.",
    ),
    mask: str = opt.option(
        None, "--mask", metavar="MASKS", show_default="none: edit the whole image",
        help="Inpaint: PNG masks of the images' size, white = regenerate, black = keep (one for all images, "
        "or a folder / .npy with one per image); the kept pixels stay exactly the input's.",
    ),
    resample: int = opt.option(
        0, "--resample", min=0, metavar="R",
        help="With --mask: RePaint's resampling, R jumps back (re-noise one step, denoise again) per step, "
        "R more network calls per step; 0 = the replacement method alone.",
    ),
    sampler: str = opt.sampler(tuple(SAMPLERS), opt.sampler_help(), show_default=DEFAULT_SAMPLER),
    steps: int = opt.steps(opt.steps_help() + " The edit runs the part of this chain below its start.",
                           show_default=opt.default_steps()),
    seed: int = opt.seed(help="Image i's noise depends only on (seed, i), never on --batch-size."),
    eta: float = opt.eta(),
    variance: str = opt.variance(),
    spacing: str = opt.spacing(),
    clip: bool = opt.clip(),
    classes: list[str] = opt.classes(
        "Class-conditional models: the class to edit towards, by name or index (repeat it for several, taken "
        "in turn; 'none' = unconditional).", show_default="none (the null class)",
    ),
    guidance: float = opt.guidance(),
    guidance_interval: str = opt.guidance_interval(),
    guide: Path = opt.guide(),
    resize: bool = opt.resize(),
    limit: int = opt.limit("Edit only the first N images."),
    batch_size: int = opt.batch_size(),
    weights: str = opt.weights(),
    output: str = opt.output(
        "A .npy file, a folder for PNGs 000000.png..., or a .png file for one grid of them ('-' = stdout).",
        metavar="PATH",
    ),
    force: bool = opt.force(),
    device: str = opt.device(),
    precision: str = opt.precision(opt.SAMPLING_PRECISION_HELP),
    compile_model: bool = opt.compile_model(),
) -> None:
    """Edit images with a trained diffusion model: SDEdit at --strength, or inpaint with --mask.

    SDEdit (Meng et al. 2022) noises each input to the level --strength and denoises it with any
    sampler: low strengths keep the picture and clean it up, high ones keep only its rough layout
    and colours. With --mask, the black pixels are kept exactly and the white ones regenerated to
    match them (the replacement method at every step; --resample R adds RePaint's resampling).
    Writes like `dtools sample`: a .npy on stdout, PNGs in -o DIR, or a grid -o X.png.

    \b
    Examples:
      dtools edit runs/emoji face.png --strength 0.6 | dtools grid -o edited.png
      dtools edit runs/emoji data/ --limit 8 --strength 0.4 -o cleaned/
      dtools edit runs/emoji faces.npy --mask hole.png --resample 4 | dtools grid -o inpainted.png
      dtools edit runs/digits scribble.png --class 7 --strength 0.7 --guidance 2 -o seven.png
    """
    from dtools.edit import EditConfig, read_edit_inputs, run_edit
    from dtools.sample import SampleConfig, Sink

    sampling = SampleConfig(
        checkpoint=checkpoint, sampler=sampler, steps=steps, seed=seed, eta=eta, variance=variance,
        spacing=spacing, batch_size=batch_size, weights=weights, clip=clip, device=device,
        precision=precision, compile=compile_model, classes=tuple(classes) if classes else None,
        guidance=guidance, guidance_interval=guidance_interval, guide=guide,
    ).with_run_guide(beside=False)
    cfg = EditConfig(sampling, tuple(sources or ()), strength=strength, mask=mask, resample=resample,
                     resize=resize, limit=limit)
    cfg.check()
    inputs = read_edit_inputs(cfg)
    # refuse a bad target before any network call; -o DIR is locked while it is written
    with Sink(output, inputs.images.shape[0], force) as sink:
        run_edit(cfg, inputs, sink)
        sink.close()
