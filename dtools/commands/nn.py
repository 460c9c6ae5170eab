"""`dtools nn`: the memorisation audit: each sample's nearest training images, and how many are copies."""

from __future__ import annotations

import json

import typer

from dtools.commands import options as opt


def nn(
    train: str = typer.Argument(
        ..., metavar="TRAIN", help="The training images: a folder, a .npy uint8 batch, or '-' (stdin)."
    ),
    samples: str = typer.Argument(..., metavar="SAMPLES", help="Generated images, in any of the same forms."),
    output: str = opt.output(
        "Write a picture of the closest samples: per row the sample, its nearest training image in "
        "pixels, and in Inception space.", metavar="FILE.png", show_default="no picture",
    ),
    top: int = typer.Option(16, "--top", min=1, help="How many of the closest samples to list and picture."),
    threshold: float = typer.Option(
        1 / 3, "--threshold", help="A sample is a copy when nearest/second-nearest distance < this.",
        show_default="1/3, Gu et al. 2023",
    ),
    space: str = opt.choice(
        "both", "--space", choices=("pixel", "inception", "both"),
        help="pixel (no network), inception, or both; the copy test uses pixels when they are searched.",
    ),
    mirror: bool = typer.Option(
        True, "--mirror/--no-mirror", help="Count a mirrored copy as a copy (dtools train flips images). "
        "--no-mirror is Gu et al.'s test exactly."
    ),
    train_stats: str = typer.Option(
        None, "--train-stats", metavar="FILE", show_default="none",
        help="TRAIN's Inception features from a statistics file (dtools fid TRAIN --save-stats FILE --kid, "
        "or a sweep's reference.safetensors): no network run on TRAIN.",
    ),
    weights: str = opt.option(
        None, "--inception-weights", metavar="FILE", old=("--weights",), show_default="as for `dtools fid`",
        help="Inception weights, as for `dtools fid`.",
    ),
    batch_size: int = opt.batch_size(help="Images per Inception call.", old=("-b",)),
    device: str = opt.device(),
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object instead."),
    force: bool = opt.force("Overwrite an existing -o picture."),
) -> None:
    """Did the model copy its training images? Nearest training images of every sample.

    For each sample: its two nearest training images in pixel space (root-mean-square difference
    of [0,1] pixels at the samples' size) and in FID's Inception feature space, and the ratio of
    the two distances. A sample is a copy when nearest/second-nearest < 1/3 in pixels (Gu et al.
    2023). Prints the copy rate and a markdown table of the closest samples on stdout.

    \b
    Examples:
      dtools nn data/ samples/ -o nn.png
      dtools nn data/ samples.npy --train-stats sweep/reference.safetensors -o nn.png
      dtools sample runs/emoji/model.safetensors -n 500 | dtools nn data/ - --space pixel
      dtools nn data/ samples.npy --json | python3 -c "import json,sys; print(json.load(sys.stdin)['rate'])"
    """
    from dtools.fid.audit import NnConfig, audit, markdown

    cfg = NnConfig(
        train, samples, grid=output, top=top, threshold=threshold, space=space, mirror=mirror,
        train_stats=train_stats, weights=weights, batch_size=batch_size, device=device, force=force,
    )
    report = audit(cfg, log=lambda line: typer.echo(line, err=True))
    typer.echo(json.dumps(report) if as_json else markdown(report))
