"""`dtools pack`: a trained model made small enough to share (one set of weights, half precision)."""

from __future__ import annotations

from pathlib import Path

import typer

from dtools.commands import options as opt

DTYPE_CHOICES = ("float16", "bfloat16", "float32")  # dtools.pack.DTYPES (not imported: it loads torch)


def pack(
    run: Path = typer.Argument(
        ..., metavar="RUN", help="Run folder of `dtools train` (or a model checkpoint; a guide.safetensors "
        "beside it is packed too)."
    ),
    output: Path = opt.output("The folder to write: model.safetensors and, when RUN has one, "
                              "guide.safetensors.", default=..., show_default=None, metavar="DIR"),
    weights: str = opt.weights("The model's weights to keep: ema (what sampling uses) or raw. The guide "
                               "keeps its EMA."),
    dtype: str = opt.choice(
        "float16", "--dtype", choices=DTYPE_CHOICES,
        help="How the weights are stored: float16 (half the bytes, rounding below 0.05 %), bfloat16, "
        "or float32 (only drop the other weights). Sampling computes as it would from the run.",
    ),
    model_only: bool = opt.option(False, "--model-only",
                                  help="Leave the run's guide out: DIR then samples unguided."),
    force: bool = opt.force("Replace the files of an earlier pack in DIR."),
) -> None:
    """Make a small copy of a trained model to share or ship: its EMA weights only, in float16.

    DIR is laid out like a run folder, so every command that reads a run reads it the same way:
    `dtools sample DIR` is autoguided by DIR/guide.safetensors as `dtools sample RUN` is by the run's.
    A 1.1 M-parameter run (model 9 MB, guide 9 MB, training state 18 MB) packs into 4.5 MB. The headers
    keep the training config, step, time and data fingerprint, and add where the pack came from
    (path and SHA-256 of each source file), the dtype and the largest rounding of a weight: `dtools
    info DIR` shows them. See docs/pack.md.

    \b
    Examples:
      dtools pack runs/emoji -o emoji-small/
      dtools sample emoji-small | dtools grid -o samples.png
      dtools pack runs/emoji/ema-best.safetensors -o best/ --dtype bfloat16
      dtools info emoji-small/model.safetensors
    """
    from dtools.pack import pack as pack_run

    done = pack_run(run, output, weights=weights, dtype=dtype, guide=not model_only, force=force)
    for p in done:
        typer.echo(f"wrote {p.path} ({p.parameters / 1e6:.2f}M parameters, {dtype}, {p.nbytes / 1e6:.1f} MB "
                   f"from {p.source_nbytes / 1e6:.1f} MB; largest rounding of a weight "
                   f"{100 * p.max_rel_error:.3f} %)", err=True)
