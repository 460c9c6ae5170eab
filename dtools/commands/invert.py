"""`dtools invert`: images to the x_T that deterministic DDIM decodes back to them."""

from __future__ import annotations

from pathlib import Path

import typer

from dtools.commands import options as opt


def invert(
    checkpoint: Path = typer.Argument(..., metavar="CKPT", help=opt.CHECKPOINT_HELP),
    sources: list[str] = typer.Argument(
        None, metavar="IMAGES", help="Image files, folders, .npy batches [N,H,W,C], or '-' (stdin)."
    ),
    steps: int = opt.steps("Timesteps of the chain, 2..T: network calls per image (more: a closer round "
                           "trip).", show_default="50"),
    spacing: str = opt.spacing(),
    refine: int = opt.refine(),
    clip: bool = opt.clip(),
    classes: list[str] = opt.classes(
        "Class-conditional models: the images' class, by name or index (repeat it for several, taken in "
        "turn); decode with the same --class.", show_default="none (the null class)",
    ),
    resize: bool = opt.resize(),
    limit: int = opt.limit("Invert only the first N images."),
    batch_size: int = opt.batch_size(),
    weights: str = opt.weights(),
    output: str = opt.output("Write the float32 .npy of latents [N, C, H, W] here ('-' = stdout)."),
    force: bool = opt.force(),
    device: str = opt.device(),
    precision: str = opt.precision(opt.SAMPLING_PRECISION_HELP),
    compile_model: bool = opt.compile_model(),
) -> None:
    """Invert images to their x_T: DDIM (eta 0) run forward, a float32 .npy [N, C, H, W] of latents.

    `dtools sample CKPT --from-latents FILE` decodes them back (ddim on the same 50-step chain by
    default): the round trip returns images close to the inputs (docs/edit.md measures how close),
    and edits made on the latents (`dtools interpolate`) move along the model's own images. Use the
    same --steps, --spacing, --class and --weights to decode as to invert.

    \b
    Examples:
      dtools invert runs/emoji face.png -o face-xT.npy
      dtools invert runs/emoji face.png | dtools sample runs/emoji --from-latents - -o again.png
      dtools invert runs/emoji data/ --limit 16 --steps 100 -o xT.npy
    """
    from dtools.edit import InvertConfig, read_inputs, run_invert
    from dtools.fileio import check_output
    from dtools.sample import LATENT_SAMPLER, SampleConfig, image_shape_of

    sampling = SampleConfig(
        checkpoint=checkpoint, sampler=LATENT_SAMPLER, steps=steps, spacing=spacing, batch_size=batch_size,
        weights=weights, clip=clip, device=device, precision=precision, compile=compile_model,
        classes=tuple(classes) if classes else None,
    )
    cfg = InvertConfig(sampling, tuple(sources or ()), resize=resize, limit=limit, refine=refine)
    cfg.check()
    images = read_inputs(cfg.sources, image_shape_of(checkpoint), resize, limit)
    check_output(output, force, "refusing to write binary .npy latents to a terminal; pipe them "
                 "(`| dtools sample CKPT --from-latents -`) or pass -o FILE.npy")
    run_invert(cfg, images, output, force)
