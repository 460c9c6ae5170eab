"""`dtools import`: a diffusers UNet2DModel pipeline folder as a dtools model checkpoint."""

from __future__ import annotations

from pathlib import Path

import typer

from dtools.commands import options as opt


def import_(
    folder: Path = typer.Argument(
        ..., metavar="DIR", help="A diffusers pipeline folder: unet/ (a UNet2DModel) and scheduler/."
    ),
    output: Path = opt.output("The checkpoint to write.", default=..., show_default=None, metavar="CKPT"),
    force: bool = opt.force("Overwrite an existing CKPT."),
) -> None:
    """Read a diffusers UNet2DModel folder into a model checkpoint for `dtools sample` and `dtools fid`.

    The betas come from the scheduler (trained_betas, or its named schedule recomputed in float64),
    the parameterization from its prediction_type; the weights become the checkpoint's EMA weights.
    A folder from `dtools export` gives back the original header. Only safetensors weights are read,
    never pickled .bin files; a model dtools' U-Net cannot express is refused, naming the field.
    See docs/import.md.

    \b
    Examples:
      dtools import emoji-ddpm/ -o emoji.safetensors
      dtools import emoji-ddpm/ -o emoji.safetensors && dtools sample emoji.safetensors | dtools grid -o s.png
    """
    from dtools.diffusers_folder import import_folder

    done = import_folder(folder, output, force=force)
    info = done.header
    origin = " (a dtools export: its header is back)" if done.embedded else ""
    hint = "; its scheduler's variance is `dtools sample --variance beta`" if done.variance == "beta" else ""
    typer.echo(
        f"wrote {done.checkpoint} (unet, {done.parameters / 1e6:.2f} M parameters, "
        f"{info['parameterization']}, T = {len(info['betas'])}) from {folder}{origin}{hint}", err=True,
    )
