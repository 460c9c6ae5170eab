"""`dtools ema`: a run's EMA of any length after training (post-hoc EMA, EDM2), or the one FID chooses."""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer

from dtools.commands import options as opt


def _lengths(text: str) -> tuple[float, ...]:
    from dtools.errors import OptionError
    from dtools.posthoc_ema import check_sigma_rel

    out: list[float] = []
    for item in text.split(","):
        try:
            value = check_sigma_rel(float(item))
        except ValueError as e:
            raise OptionError("--lengths", f"{item.strip()!r}: {e}") from None
        if value in out:
            raise OptionError("--lengths", f"{value:g} is listed twice")
        out.append(value)
    return tuple(out)


def ema(
    run: Path = typer.Argument(..., metavar="RUN", help="Run folder of `dtools train --posthoc-ema N`."),
    output: str = opt.output("The model checkpoint to write (RUN/NAME.safetensors is sampled with the run's "
                             "guide, like RUN itself).", default=..., show_default=None),
    length: float = opt.option(
        None, "--length", metavar="S", show_default="chosen with --choose",
        help="The EMA's length σ_rel: the width of its average as a fraction of the run (EDM2), in "
        "[0.01, 0.30], e.g. 0.1.",
    ),
    choose: bool = opt.option(
        False, "--choose", help="Try every --lengths, sample each, and keep the one of lowest FID against "
        "--reference.",
    ),
    lengths: str = opt.option(
        None, "--lengths", metavar="LIST", show_default="0.05,0.08,0.11,0.15,0.20,0.25",
        help="The lengths --choose tries, comma-separated.",
    ),
    reference: str = opt.option(
        None, "--reference", metavar="REF", show_default="the run's training images",
        help="What --choose scores against: images (a folder, a .npy) or a `dtools fid --save-stats` file. "
        "Never the held-out images you report FID on.",
    ),
    n: int = opt.num(500, help="Samples per length for --choose.", min=8),  # fid.interval.MIN_SAMPLES
    seed: int = opt.seed(help="Image i of every length starts from the same noise."),
    guidance: float = opt.guidance(show_default="as dtools sample: autoguided by RUN/guide.safetensors"),
    plot: str = opt.option(None, "--plot", metavar="FILE", show_default="none",
                           help="--choose: FID against the length, as a PNG."),
    fid_weights: str = opt.option(None, "--inception-weights", metavar="FILE",
                                  show_default="as for `dtools fid`",
                                  help="Inception weights, as for `dtools fid`."),
    batch_size: int = opt.batch_size(),
    device: str = opt.device(),
    precision: str = opt.precision("Sampling precision; auto: bf16 on a CUDA GPU and on a CPU with AMX, "
                                   "else fp32."),
    as_json: bool = typer.Option(False, "--json", help="--choose: print the report as one JSON object."),
    force: bool = opt.force(),
) -> None:
    """Make a run's EMA of any length after training (post-hoc EMA, Karras et al. 2024).

    A run trained with --posthoc-ema N keeps N snapshots of two power-function EMAs (lengths 0.05 and
    0.10) in RUN/posthoc/; a weighted sum of them makes the EMA of any length at the run's end. With
    --length S, write that one. With --choose, sample -n images of each --lengths with sample's
    defaults, score them (FID and KID) against --reference, print the table, and write the best.
    A length the snapshots make only roughly is warned about.

    \b
    Examples:
      dtools train data/ -o run --max-minutes 15 --posthoc-ema 16
      dtools ema run --length 0.15 -o run/ema-0.15.safetensors
      dtools ema run --choose -o run/ema-best.safetensors --plot ema.png
      dtools sample run/ema-best.safetensors -n 64 | dtools grid -o samples.png
    """
    from dtools import posthoc
    from dtools.errors import DtoolsError
    from dtools.fileio import check_writable

    if (length is None) == (not choose):
        raise DtoolsError("give --length S (one EMA length) or --choose (the best of --lengths by FID)")
    if length is not None:
        from dtools.posthoc_ema import check_sigma_rel

        try:
            check_sigma_rel(length if math.isfinite(length) else math.nan)
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint="--length") from None
        for flag, value in {"--lengths": lengths, "--reference": reference, "--plot": plot}.items():
            if value is not None:
                raise DtoolsError(f"{flag} is for --choose")
    _not_the_runs_own(run, output)
    check_writable(output, force)
    if plot is not None:
        check_writable(plot, force)
    log = lambda line: typer.echo(line, err=True)  # noqa: E731
    if length is not None:
        weights, header = posthoc.reconstruct(run, length, log=log)
        raw = posthoc.save(run, output, weights, header, force)
        made = header["ema_posthoc"]
        log(f"wrote {output}: EMA length {length:g} at step {header['step']}, from {made['snapshots']} "
            f"snapshots (profile error {made['error']:.1e}){'' if raw else '; no raw weights'}")
        return
    from dtools.fid.ema_choice import ChoiceConfig
    from dtools.fid.ema_choice import choose as choose_length
    from dtools.posthoc_ema import CANDIDATES

    found = posthoc.snapshots(run)
    ref = reference if reference is not None else _training_data(run, found[-1].path)
    cfg = ChoiceConfig(run=Path(run), reference=ref, lengths=_lengths(lengths) if lengths else CANDIDATES,
                       n=n, seed=seed, guidance=guidance, batch_size=batch_size, device=device,
                       precision=precision, fid_weights=fid_weights)
    report = choose_length(cfg, log=log, plot=Path(plot) if plot else None, force=force)
    posthoc.save(run, output, report.pop("weights"), report.pop("header"), force)
    log(f"wrote {output}: EMA length {report['chosen']:g}" + (f"; {plot}" if plot else ""))
    typer.echo(json.dumps(report) if as_json else _markdown(report))


def _not_the_runs_own(run: Path, output: str) -> None:
    """Refuse -o naming a file the run itself keeps (its checkpoint, guide, state, or a snapshot)."""
    from dtools.checkpoint import RUN_GUIDE_FILE, RUN_MODEL_FILE
    from dtools.errors import DtoolsError
    from dtools.posthoc_ema import SNAPSHOT_DIR
    from dtools.train.run import STATE_FILE

    out = Path(output).resolve()
    names = (RUN_MODEL_FILE, RUN_GUIDE_FILE, STATE_FILE)
    own = {(Path(run) / name).resolve() for name in names}
    if out in own or out.parent == (Path(run) / SNAPSHOT_DIR).resolve():
        raise DtoolsError(f"-o {output} is a file of the run itself; write the EMA beside it, e.g. "
                          f"{Path(run) / 'ema.safetensors'}")


def _training_data(run: Path, snapshot: Path) -> str:
    from dtools.checkpoint import read_info
    from dtools.errors import DtoolsError

    data = (read_info(snapshot).get("train") or {}).get("data")
    if not data or not Path(data).exists():
        raise DtoolsError(f"{run}: its training images ({data or 'not recorded'}) are not here; give "
                          "--reference REF (images or a `dtools fid --save-stats` file)")
    return data


def _markdown(report: dict) -> str:
    has_kid = any("kid_mean" in r for r in report["rows"])
    head = ["EMA length", "FID", "95% interval", *(["KID"] if has_kid else []), "profile error",
            "no clear difference from"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["rows"]:
        mark = " (chosen)" if r["ema_length"] == report["chosen"] else ""
        cells = [f"{r['ema_length']:g}{mark}", f"{r['fid']:.2f}", f"{r['fid_low']:.2f}-{r['fid_high']:.2f}"]
        if has_kid:
            cells.append(f"{r['kid_mean']:.4f}" if "kid_mean" in r else "n/a")
        cells += [f"{r['profile_error']:.1e}", ", ".join(f"{t:g}" for t in r["ties"]) or "-"]
        lines.append("| " + " | ".join(cells) + " |")
    ref = report["reference"]
    lines += ["", f"{report['samples_per_length']} samples per length (seed {report['seed']}) against "
              f"{ref['images']} images of {ref['source']}."]
    return "\n".join(lines)
