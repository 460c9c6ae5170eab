"""`dtools export`: a trained model checkpoint in another library's format (diffusers)."""

from __future__ import annotations

from pathlib import Path

import typer

from dtools.commands import options as opt


def export(
    checkpoint: Path = typer.Argument(
        ..., metavar="CKPT", help="Model checkpoint written by `dtools train` (RUN/model.safetensors)."
    ),
    output: Path = opt.output("The folder to write.", default=..., show_default=None, metavar="DIR"),
    fmt: str = opt.choice(
        "diffusers", "--format", choices=("diffusers",),
        help="diffusers: a DDPMPipeline folder (UNet2DModel + DDPMScheduler).",
    ),
    weights: str = opt.weights(),
    variance: str = opt.choice(
        "posterior", "--variance", choices=("posterior", "beta"),
        help="The scheduler's variance_type: posterior (β̃_t, fixed_small, `dtools sample`'s default) or beta "
        "(β_t, fixed_large).",
    ),
    force: bool = opt.force("Replace an earlier export in DIR."),
) -> None:
    """Write a model checkpoint as a diffusers DDPMPipeline folder, loaded with no dtools code.

    DIR gets model_index.json, unet/ (UNet2DModel: config.json, diffusion_pytorch_model.safetensors)
    and scheduler/ (DDPMScheduler with the checkpoint's exact betas and prediction type). The network
    is the same, parameter for parameter; a model diffusers cannot express exactly is refused, naming
    the field. `dtools import` reads the folder back. See docs/export.md.

    \b
    Examples:
      dtools export runs/emoji/model.safetensors -o emoji-ddpm/
      python -c "from diffusers import DDPMPipeline; DDPMPipeline.from_pretrained('emoji-ddpm')"
      dtools export runs/emoji/model.safetensors -o emoji-raw/ --weights raw --variance beta
      dtools export ckpt.safetensors -o out/ && dtools import out/ -o back.safetensors \\
          && dtools sample back.safetensors | dtools grid -o same-as-ckpt.png
    """
    from dtools.diffusers_folder import export as export_model

    done = export_model(checkpoint, output, fmt, weights=weights, variance=variance, force=force)
    sched = done.scheduler_config
    typer.echo(
        f"wrote {done.folder}/ ({done.unet_config['_class_name']}, {done.parameters / 1e6:.2f} M parameters, "
        f"{done.weights} weights; {sched['_class_name']}: T = {sched['num_train_timesteps']}, "
        f"{sched['prediction_type']}, {sched['variance_type']})", err=True,
    )
