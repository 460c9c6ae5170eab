"""`dtools prep`: any folder of images (or the built-in twemoji set) -> a clean square PNG training folder."""

from __future__ import annotations

from pathlib import Path

import typer

from dtools.errors import DtoolsError
from dtools.fileio import check_output, is_stdio, write_npy
from dtools.prep import (
    BUILTIN_SOURCES,
    PrepConfig,
    check_not_nested,
    check_output_folder,
    default_jobs,
    parse_color,
    run_prep,
    source_files,
)

_MAX_WARNINGS = 10  # skipped files named one by one; the rest are counted


def prep(
    src: str = typer.Argument(
        ..., metavar="SRC", help="A folder of images (recursive), one image, or 'twemoji' (built in)."
    ),
    out: Path = typer.Argument(
        None, metavar="OUT", help="The PNG folder to write (000000.png, ...). Optional with --npy."
    ),
    size: int = typer.Option(..., "--size", "-s", min=1, max=8192, help="Side of the square output images."),
    crop: str = typer.Option(
        "center", "--crop", help="center: crop the middle square; resize: squash to a square; pad: letterbox."
    ),
    background: str = typer.Option(
        "white", "--background", "--bg", help="Colour behind transparent pixels and pad: name, #hex, 0-255."
    ),
    channels: int = typer.Option(3, "--channels", "-c", min=1, max=3, help="3 = RGB, 1 = grey."),
    limit: int = typer.Option(None, "--limit", "-n", min=1, help="Stop after this many images (in order)."),
    npy: str = typer.Option(None, "--npy", help="Also write the batch, uint8 [N,H,W,C] .npy ('-' = stdout)."),
    strict: bool = typer.Option(False, "--strict", help="Stop with an error at the first unreadable file."),
    jobs: int = typer.Option(0, "--jobs", "-j", min=0, help="Worker processes; 0 = one per core."),
    force: bool = typer.Option(False, "--force", "-f", help="Replace an earlier prep folder / .npy file."),
) -> None:
    """Make a training folder: square crop, resize (Lanczos), alpha onto a background, RGB or grey.

    Unreadable or corrupt files are skipped with a warning and counted (--strict: an error). The
    output folder appears only when everything is written; images keep the sorted order of SRC.

    \b
    Examples:
      dtools prep twemoji data/ --size 32
      dtools prep ~/photos/ data64/ --size 64 --crop center --background black
      dtools prep twemoji --size 32 --limit 16 --npy - | dtools grid --scale 4 -o emoji.png
      dtools prep scans/ grey/ --size 48 --channels 1 --strict
    """
    from dtools.progress import log, progress_bar

    cfg = PrepConfig(size=size, crop=crop, background=parse_color(background), channels=channels)
    if out is None and npy is None:
        raise typer.BadParameter("give an output folder OUT, or --npy FILE (or both)", param_hint="OUT")
    if src in BUILTIN_SOURCES and Path(src).is_dir():
        log(f"note: {src!r} is the built-in source; write ./{src} to use your folder of that name")
    # Check every output before the work starts, so a long run never fails at its last step.
    if out is not None:
        check_output_folder(out, force)
        if src not in BUILTIN_SOURCES:
            check_not_nested(Path(src), out)
    if npy is not None:
        check_output(
            npy,
            force,
            "refusing to write binary .npy data to a terminal; pipe it (| dtools grid) or give --npy FILE",
        )
    files = source_files(src)
    jobs = jobs or default_jobs()

    skipped_shown = 0

    def warn(path: Path, reason: str) -> None:
        nonlocal skipped_shown
        skipped_shown += 1
        if skipped_shown <= _MAX_WARNINGS:
            log(f"warning: skipped {reason}")

    with progress_bar("prep", min(len(files), limit) if limit else len(files)) as bar:
        report = run_prep(
            files, cfg, out, force=force, jobs=jobs, limit=limit, strict=strict, keep_batch=npy is not None,
            on_skip=warn, on_progress=bar.advance,
        )
    if npy is not None:
        assert report.batch is not None
        try:
            write_npy(report.batch, npy, force)
        except DtoolsError as e:
            where = f" (the PNG folder {out} was written)" if out is not None else ""
            raise DtoolsError(f"{e}{where}") from None
    n_skip = len(report.skipped)
    if n_skip > _MAX_WARNINGS:
        log(f"warning: ... and {n_skip - _MAX_WARNINGS} more skipped files")
    kind = "RGB" if channels == 3 else "grey"
    dests = [f"{out}/"] if out is not None else []
    if npy is not None:
        dests.append("stdout" if is_stdio(npy) else npy)
    dest = " and ".join(dests)
    log(
        f"prep: wrote {report.written} images ({size}x{size} {kind}) to {dest}, skipped {n_skip}, "
        f"in {report.seconds:.1f} s ({report.jobs} process{'es' if report.jobs > 1 else ''})"
    )
