"""`dtools grid`: lay images out in one PNG (from a pipe, .npy files, folders or image files)."""

from __future__ import annotations

import typer

from dtools.commands import options as opt
from dtools.fileio import check_output, is_stdio, write_bytes


def grid(
    sources: list[str] = typer.Argument(
        None, metavar="SOURCE", help="'-' (.npy on stdin, the default), .npy files, folders, images."
    ),
    output: str = opt.output("The PNG to write ('-' = stdout, refused on a terminal)."),
    nrow: int = opt.nrow("Images per row: N / the number of --row-labels, else √N."),
    padding: int = typer.Option(2, "--padding", min=0, help="Pixels between images and around the grid."),
    pad_value: int = typer.Option(255, "--pad-value", min=0, max=255, help="Grey level of the padding."),
    scale: int = typer.Option(
        None, "--scale", min=1, show_default="auto: tiny images enlarged until the grid is 256 px wide",
        help="Enlarge each image by this factor (nearest neighbour).",
    ),
    row_labels: str = typer.Option(
        None, "--row-labels", metavar="LABEL,...", show_default="none",
        help="Comma-separated labels, one per row.",
    ),
    limit: int = opt.limit(),
    force: bool = opt.force(),
) -> None:
    """Lay images out in a grid and write one PNG (to -o FILE, or to stdout when it is a pipe).

    \b
    Examples:
      dtools sample runs/emoji/model.safetensors -n 64 | dtools grid -o samples.png
      dtools grid data/ --limit 64 --nrow 8 --scale 2 -o real.png
      dtools noise face.png --beta linear --beta cosine -t 0,100,500,999 \\
          | dtools grid --row-labels linear,cosine -o noising.png
      dtools grid data/ --limit 16 | display
    """
    from dtools.grid import make_grid
    from dtools.images import png_bytes, read_images

    # refuse before reading all the images
    check_output(output, force, "refusing to write PNG data to a terminal; pass -o FILE or pipe stdout")
    batch = read_images(sources or ["-"], limit=limit)
    labels = [s.strip() for s in row_labels.split(",")] if row_labels else None
    picture = make_grid(batch, nrow=nrow, padding=padding, scale=scale, pad_value=pad_value, labels=labels)
    write_bytes(png_bytes(picture), output, force)
    if is_stdio(output):
        return
    typer.echo(f"wrote {output} ({batch.shape[0]} images, {picture.shape[1]}x{picture.shape[0]})", err=True)
