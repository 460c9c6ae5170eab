"""`dtools sweep`: FID against sampling cost, for several samplers and step counts of one checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from dtools.commands import options as opt
from dtools.sampler_specs import SAMPLERS


def sweep(
    checkpoint: Path = typer.Argument(
        ..., metavar="CKPT", help="Model checkpoint written by `dtools train` (RUN/model.safetensors)."
    ),
    reference: str = typer.Argument(
        ..., metavar="REF", help="Real images (a folder, a .npy batch) or the OUT/reference.safetensors "
        "of an earlier sweep (or any `dtools fid --save-stats` file)."
    ),
    sampler_list: str = opt.option(
        ..., "--samplers", metavar="LIST", old=("-s",),
        help="SAMPLER:STEPS items, comma-separated; a bare number repeats the sampler before it: "
        f"ddpm:1000,ddim:50,dpm++2m:10,20 (samplers: {', '.join(SAMPLERS)}).",
    ),
    output: str = opt.output(
        "Folder for the samples (SAMPLER-STEPS.npy), reference.safetensors, sweep.png and sweep.json.",
        default=..., show_default=None, metavar="DIR",
    ),
    n: int = opt.num(1000, help="Samples per setting.", min=2),
    seed: int = opt.seed(help="Image i of every setting starts from the same noise."),
    subsets: int = typer.Option(
        200, "--subsets", min=2, help="Half-subsets for each FID's 95% interval."
    ),
    weights: str = opt.weights("The model's weights: ema, or raw (the online weights, without EMA)."),
    fid_weights: str = opt.option(
        None, "--inception-weights", metavar="FILE", old=("--fid-weights",),
        show_default="as for `dtools fid`", help="Inception weights, as for `dtools fid`.",
    ),
    batch_size: int = opt.batch_size(old=("-b",)),
    device: str = opt.device(),
    precision: str = opt.precision(
        "Sampling precision; auto: bf16 on a CUDA GPU and on a CPU with AMX, else fp32."
    ),
    compile_model: bool = typer.Option(
        None, "--compile/--no-compile", help="torch.compile the network.",
        show_default="on for CUDA, off on the CPU",
    ),
    guidance: str = typer.Option(
        None, "--guidance", metavar="W[,W...]", show_default="as dtools sample: 1 with a guide, else 0",
        help="Guide every setting as `dtools sample --guidance W` does (its default too: the run's "
        "guide.safetensors beside CKPT); several weights, comma-separated, make each a setting of its own "
        "(0,0.5,1,2). Network calls count the guide's.",
    ),
    guidance_interval: list[str] = typer.Option(
        None, "--guidance-interval", metavar="LO,HI", show_default="as dtools sample",
        help="Guide only where σ_t lies in (LO, HI], as in `dtools sample`; give it again for more "
        "settings (0,inf: every step).",
    ),
    guide: Path = typer.Option(
        None, "--guide", metavar="CKPT", show_default="the model's null class",
        help="Autoguidance: the weaker model (or run folder) to guide with, as in `dtools sample`.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object, not a table."),
    force: bool = opt.force("Overwrite files already in DIR."),
) -> None:
    """FID against sampling cost: sample N images per sampler setting, score each against one reference.

    Every setting draws image i from the same seed. Prints a markdown table (network calls per
    image, sampling wall time, FID with a 95% interval, KID, and which settings no score tells
    apart) and plots FID against network calls in DIR/sweep.png. The reference statistics are
    saved once as DIR/reference.safetensors: pass that file as REF next time.

    \b
    Examples:
      dtools sweep runs/emoji/model.safetensors data/ --samplers ddpm:1000,ddim:50,dpm++2m:10,20 -o sweep/
      dtools sweep ckpt.safetensors sweep/reference.safetensors --samplers dpm++2m:5,10 -o sw2/ > sw2.md
      dtools grid sweep/dpm++2m-10.npy --limit 64 -o dpm10.png
      dtools sweep runs/emoji heldout/ --samplers dpm++2m:10,20 --guide runs/emoji --guidance 1 -o auto/
      dtools sweep runs/emoji heldout/ --samplers dpm++2m:20 --guidance 0,0.5,1,2 \\
          --guidance-interval 0,inf --guidance-interval 0.28,5.42 -o guidance/
    """
    from dtools.fid.sweep import SweepConfig, markdown
    from dtools.fid.sweep import sweep as run_sweep

    cfg = SweepConfig(
        checkpoint=checkpoint, reference=reference, samplers=sampler_list, out=output, n=n, seed=seed,
        subsets=subsets, weights=weights, fid_weights=fid_weights, batch_size=batch_size, device=device,
        precision=precision, compile=compile_model, force=force, guidance=guidance,
        guidance_interval=tuple(guidance_interval or ()), guide=guide,
    )
    report = run_sweep(cfg, log=lambda line: typer.echo(line, err=True))
    for note in report["warnings"]:
        typer.echo(f"Warning: {note}", err=True)
    typer.echo(json.dumps(report) if as_json else markdown(report))
