"""`dtools prep`: any folder of images (or a built-in set: twemoji, mnist) -> a clean square PNG
training folder, with its class labels when the source has them."""

from __future__ import annotations

from pathlib import Path

import typer

from dtools.commands import options as opt
from dtools.fileio import is_stdio
from dtools.prep import BUILTIN_SOURCES, CROPS, LABEL_SOURCES, PrepConfig, parse_color, run


def prep(
    src: str = typer.Argument(
        ..., metavar="SRC",
        help="A folder of images (recursive; one sub-folder per class for labels), one image, or a "
             f"built-in set: {', '.join(repr(n) for n in BUILTIN_SOURCES)}."
    ),
    out: Path = typer.Argument(
        None, metavar="OUT", help="The PNG folder to write (000000.png, ...). Optional with --npy."
    ),
    size: int = opt.option(..., "--size", min=1, max=8192, help="Side of the square output images.",
                           old=("-s",)),
    crop: str = opt.choice(
        "center", "--crop", choices=tuple(CROPS),
        help="center: crop the middle square; resize: squash to a square; pad: letterbox.",
    ),
    background: str = opt.option(
        "white", "--background", metavar="COLOUR", old=("--bg",),
        help="Colour behind transparent pixels and pad: a name, #hex, or a grey level 0-255.",
    ),
    channels: int = typer.Option(3, "--channels", "-c", min=1, max=3, help="3 = RGB, 1 = grey."),
    limit: int = opt.limit("Use only the first N images of SRC (in sorted order; a labelled source's "
                           "classes taken in turn).", old=("-n",)),
    npy: str = opt.option(
        None, "--npy", metavar="FILE", show_default="none",
        help="Also write the batch, uint8 [N,H,W,C] .npy ('-' = stdout).",
    ),
    strict: bool = typer.Option(False, "--strict", help="Stop with an error at the first unreadable file."),
    labels: str = opt.choice(
        "auto", "--labels", choices=LABEL_SOURCES,
        help="Keep class labels in OUT/dataset.json. auto: SRC's dataset.json, else one sub-folder per "
             "class, else none; folders: insist on class sub-folders; none: write no labels.",
    ),
    jobs: int = typer.Option(0, "--jobs", "-j", min=0, help="Worker processes; 0 = one per core."),
    force: bool = opt.force("Replace an earlier prep folder / .npy file."),
) -> None:
    """Make a training folder: square crop, resize (Lanczos), alpha onto a background, RGB or grey.

    Unreadable or corrupt files are skipped with a warning and counted (--strict: an error). The
    output folder appears only when everything is written; images keep the sorted order of SRC.
    A labelled source (SRC/dataset.json, or one sub-folder per class: SRC/cat/*.jpg, SRC/dog/*.jpg)
    keeps its classes in OUT/dataset.json, its images written with the classes taken in turn.

    \b
    Examples:
      dtools prep twemoji data/ --size 32
      dtools prep mnist digits/ --size 32 --channels 1
      dtools prep ~/photos/ data64/ --size 64 --crop center --background black
      dtools prep pets/ pets64/ --size 64        # pets/cat/*.jpg, pets/dog/*.jpg: 2 classes
      dtools prep twemoji --size 32 --limit 16 --npy - | dtools grid --scale 4 -o emoji.png
      dtools prep scans/ grey/ --size 48 --channels 1 --strict
    """
    from dtools.progress import log

    cfg = PrepConfig(size=size, crop=crop, background=parse_color(background), channels=channels)
    if out is None and npy is None:
        raise typer.BadParameter("give an output folder OUT, or --npy FILE (or both)", param_hint="OUT")
    report = run(src, cfg, out, npy, force=force, jobs=jobs, limit=limit, strict=strict, labels=labels)
    kind = "RGB" if channels == 3 else "grey"
    if report.labels is not None and out is not None:
        kind += f", {len(report.classes)} classes"
    dests = [f"{out}/"] if out is not None else []
    if npy is not None:
        dests.append("stdout" if is_stdio(npy) else npy)
    processes = f"{report.jobs} process{'es' if report.jobs > 1 else ''}"
    log(
        f"prep: wrote {report.written} images ({size}x{size} {kind}) to {' and '.join(dests)}, skipped "
        f"{len(report.skipped)}, in {report.seconds:.1f} s ({processes})"
    )
