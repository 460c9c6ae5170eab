"""`dtools sweep`: FID against sampling cost, for several samplers and step counts of one checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def sweep(
    checkpoint: Path = typer.Argument(
        ..., metavar="CKPT", help="Model checkpoint written by `dtools train` (RUN/model.safetensors)."
    ),
    reference: str = typer.Argument(
        ..., metavar="REF", help="Real images (a folder, a .npy batch) or the OUT/reference.safetensors "
        "of an earlier sweep (or any `dtools fid --save-stats` file)."
    ),
    sampler_list: str = typer.Option(
        ..., "--samplers", "-s", metavar="LIST", help="SAMPLER:STEPS items, comma-separated; a bare number "
        "repeats the sampler before it: ddpm:1000,ddim:50,dpm++2m:10,20 (samplers: ddpm, ddim, dpm++2m, "
        "heun).",
    ),
    output: str = typer.Option(
        ..., "-o", "--output", metavar="DIR", help="Folder for the samples (SAMPLER-STEPS.npy), "
        "reference.safetensors, sweep.png and sweep.json."
    ),
    n: int = typer.Option(1000, "-n", "--num", min=2, help="Samples per setting."),
    seed: int = typer.Option(0, "--seed", help="Image i of every setting starts from the same noise."),
    subsets: int = typer.Option(
        200, "--subsets", min=2, help="Half-subsets for each FID's 95% interval."
    ),
    weights: str = typer.Option("ema", "--weights", help="Model weights: ema, or raw."),
    fid_weights: str = typer.Option(
        None, "--fid-weights", metavar="PATH", help="Inception weights, as `dtools fid --weights`."
    ),
    batch_size: int = typer.Option(64, "--batch-size", "-b", min=1, help="Images per network call."),
    device: str = typer.Option("auto", "--device", help="auto (cuda, then mps, then cpu), cpu, cuda, mps."),
    precision: str = typer.Option("auto", "--precision", help="Sampling precision: auto, fp32, bf16, fp16."),
    compile_model: bool = typer.Option(
        None, "--compile/--no-compile", help="torch.compile the network. "
        "[default: on for CUDA, off on the CPU]"
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object, not a table."),
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite files already in DIR."),
) -> None:
    """FID against sampling cost: sample N images per sampler setting, score each against one reference.

    Every setting draws image i from the same seed. Prints a markdown table (network calls per
    image, sampling wall time, FID with a 95% interval, KID, and which settings no score tells
    apart) and plots FID against network calls in DIR/sweep.png. The reference statistics are
    saved once as DIR/reference.safetensors: pass that file as REF next time.

    \b
    Examples:
      dtools sweep runs/emoji/model.safetensors data/ -s ddpm:1000,ddim:50,dpm++2m:10,20 -n 1000 -o sweep/
      dtools sweep ckpt.safetensors sweep/reference.safetensors -s dpm++2m:5,10,20,heun:10 -o sw2/ > sw2.md
      dtools grid sweep/dpm++2m-10.npy --limit 64 -o dpm10.png
    """
    from dtools.fid.sweep import SweepConfig, markdown
    from dtools.fid.sweep import sweep as run_sweep

    cfg = SweepConfig(
        checkpoint=checkpoint, reference=reference, samplers=sampler_list, out=output, n=n, seed=seed,
        subsets=subsets, weights=weights, fid_weights=fid_weights, batch_size=batch_size, device=device,
        precision=precision, compile=compile_model, force=force,
    )
    report = run_sweep(cfg, log=lambda line: typer.echo(line, err=True))
    for note in report["warnings"]:
        typer.echo(f"Warning: {note}", err=True)
    typer.echo(json.dumps(report) if as_json else markdown(report))
