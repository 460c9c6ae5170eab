"""`dtools info`: what a checkpoint, run folder, training state or FID statistics file holds."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def info(
    path: Path = typer.Argument(
        ..., metavar="PATH", help="A run folder, model checkpoint, train-state or FID statistics file."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the facts as one JSON object."),
) -> None:
    """Show what a dtools file or run folder holds, from its headers alone (no weights are loaded).

    A checkpoint: model type and network, parameters, parameterization and schedule, step, images
    seen, training time, EMA decay, the data it was trained on (and its fingerprint), where a
    fine-tuned run started. A run folder: that, plus its losses from metrics.jsonl and its last
    sample grid. Results go to stdout.

    \b
    Examples:
      dtools info runs/emoji
      dtools info runs/emoji/model.safetensors --json | jq .schedule
      dtools info data-stats.safetensors
    """
    from dtools.info import inspect

    found = inspect(path)
    if as_json:
        typer.echo(json.dumps({"path": found.path, "kind": found.kind, **found.facts}, indent=2))
    else:
        typer.echo(found.text())
