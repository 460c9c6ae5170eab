"""`dtools train`: train a DDPM noise predictor on a folder of prepared images, with EMA and exact resume."""

from __future__ import annotations

import json

import typer

from dtools.errors import DtoolsError

_PRESET_HELP = (
    "Model preset: auto picks by image size (<=16: cpu16, <=32: cpu32, else seed64, the seed's U-Net). "
    "cpu16/cpu32 default to lr 1e-3, batch 16, EMA warm-up, grad-clip 1, 2000 steps (chosen by measured "
    "runs on a 2-core CPU, docs/train.md); seed64 to the seed's lr 1e-4, batch 128, EMA 0.999, 25000 steps."
)


def _ints(text: str | None, flag: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        return tuple(int(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        raise typer.BadParameter(f"expected integers like 1,2,2, got {text!r}", param_hint=flag) from None


def train(
    data: str = typer.Argument(
        None,
        metavar="DATA",
        help="Folder of prepared square images (or a uint8 .npy batch); optional with --resume.",
    ),
    beta: str = typer.Option(
        None,
        "--beta",
        "-b",
        help="Noise schedule: a .npy of betas ('-' = stdin) or a name (cosine, linear...).",
    ),
    out: str = typer.Option(
        ..., "-o", "--out", help="Run folder: checkpoints, metrics, loss curve, samples."
    ),
    param: str = typer.Option(None, "--param", help="What the network predicts: eps (the seed's), x0 or v."),
    preset: str = typer.Option(None, "--preset", help=_PRESET_HELP + " [default: auto]"),
    base_channels: int = typer.Option(None, "--base-channels", min=1, help="U-Net: channels of level 1."),
    channel_mult: str = typer.Option(
        None, "--channel-mult", help="U-Net: channel multiplier per level: 1,2,4."
    ),
    res_blocks: int = typer.Option(None, "--res-blocks", min=1, help="U-Net: residual blocks per level."),
    attention: str = typer.Option(
        None, "--attention", help="U-Net: resolutions with self-attention: 16, or none."
    ),
    heads: int = typer.Option(None, "--heads", min=1, help="U-Net: attention heads."),
    dropout: float = typer.Option(
        None, "--dropout", min=0.0, max=0.99, help="U-Net: dropout in residual blocks."
    ),
    lr: float = typer.Option(None, "--lr", min=0.0, help="Adam learning rate [default: from the preset]."),
    batch: int = typer.Option(
        None, "--batch", min=1, help="Images per optimizer step [default: from the preset]."
    ),
    grad_accum: int = typer.Option(
        None,
        "--grad-accum",
        min=1,
        help="Split each batch into N micro-batches (same maths, less memory) [1].",
    ),
    ema: float = typer.Option(
        None, "--ema", min=0.0, max=0.99999, help="EMA decay of the sampling weights [0.999]."
    ),
    ema_warmup: bool = typer.Option(
        None, "--ema-warmup/--no-ema-warmup", help="EMA decay min(decay, (1+n)/(10+n)) [default: preset]."
    ),
    min_snr_gamma: float = typer.Option(
        None, "--min-snr-gamma", help="Min-SNR-γ loss weight (Hang et al. 2023), e.g. 5 [default: plain MSE]."
    ),
    grad_clip: float = typer.Option(
        None, "--grad-clip", min=0.0, help="Clip the gradient norm at this value; 0 = off [default: preset]."
    ),
    flip: bool = typer.Option(None, "--flip/--no-flip", help="Random horizontal flips [default: on]."),
    max_steps: int = typer.Option(
        None,
        "--max-steps",
        min=1,
        help="Stop at this TOTAL step (a resumed run stops where a straight one would).",
    ),
    epochs: float = typer.Option(
        None, "--epochs", min=0.0, help="Stop after this many passes over the data."
    ),
    max_minutes: float = typer.Option(
        None, "--max-minutes", min=0.0, help="Wall-clock budget of this session; it ends with a checkpoint."
    ),
    seed: int = typer.Option(None, "--seed", help="Seed of init, shuffling and noise [default: 0]."),
    save_every: int = typer.Option(
        None, "--save-every", min=1, help="Checkpoint every N steps [default: preset]."
    ),
    sample_every: int = typer.Option(
        None, "--sample-every", min=0, help="EMA sample grid every N steps and at the end; 0 = off [preset]."
    ),
    samples: int = typer.Option(None, "--samples", min=1, help="Images per sample grid [default: 16]."),
    log_every: int = typer.Option(
        None, "--log-every", min=1, help="A metrics.jsonl line every N steps [10]."
    ),
    precision: str = typer.Option(
        None, "--precision", help="auto (bf16 on GPUs with it, else fp16; fp32 on CPU), bf16, fp16 or fp32."
    ),
    device: str = typer.Option(None, "--device", help="auto, cpu or cuda [default: auto]."),
    compile_: bool = typer.Option(
        None,
        "--compile/--no-compile",
        help="torch.compile the U-Net in place [default: on for CUDA; off on CPU, where compiling "
        "took 108 s and saved 2% per step (measured, docs/train.md)].",
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in RUN from its last checkpoint."),
    force: bool = typer.Option(
        False, "--force", "-f", help="Start over in an existing RUN (deletes its files)."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the resolved configuration as JSON and exit."
    ),
) -> None:
    """Train a DDPM noise predictor (U-Net, Adam, EMA) on a folder of prepared images.

    Writes RUN/model.safetensors (EMA + raw weights; what `dtools sample` reads), RUN/train-state.safetensors
    (for --resume), RUN/metrics.jsonl, RUN/loss.png and RUN/samples/step_XXXXXX.png, all atomically,
    every --save-every steps and at the end. Ctrl-C saves a checkpoint before stopping; a killed run
    continues with --resume from its last checkpoint.

    \b
    Examples:
      dtools prep twemoji data/ --size 32
      dtools schedule cosine -T 1000 > beta.npy
      dtools train data/ --beta beta.npy -o runs/emoji --max-steps 2000
      dtools schedule cosine -T 1000 | dtools train data/ --beta - -o runs/emoji --max-minutes 10
      dtools train --resume -o runs/emoji --max-steps 4000
      dtools train data/ --beta cosine -o runs/v --param v --min-snr-gamma 5 --dry-run
      dtools sample runs/emoji/model.safetensors | dtools grid -o samples.png
    """
    import numpy as np

    from dtools import dataset
    from dtools import train as training
    from dtools.fileio import load_schedule

    if resume and force:
        raise typer.BadParameter(
            "--resume continues RUN, --force starts it over: give one", param_hint="--force"
        )
    options = {
        "parameterization": param,
        "preset": preset,
        "base_channels": base_channels,
        "channel_mult": _ints(channel_mult, "--channel-mult"),
        "num_res_blocks": res_blocks,
        "attention_resolutions": _ints(attention, "--attention"),
        "num_heads": heads,
        "dropout": dropout,
        "lr": lr,
        "batch_size": batch,
        "grad_accum": grad_accum,
        "ema_decay": ema,
        "ema_warmup": ema_warmup,
        "min_snr_gamma": min_snr_gamma,
        "grad_clip": grad_clip,
        "flip": flip,
        "max_steps": max_steps,
        "epochs": epochs,
        "max_minutes": max_minutes,
        "seed": seed,
        "save_every": save_every,
        "sample_every": sample_every,
        "sample_count": samples,
        "log_every": log_every,
        "precision": precision,
        "device": device,
        "compile": compile_,
    }
    if resume:
        from pathlib import Path

        from dtools.trainstate import read_state_header

        info = read_state_header(training.resumable_state(Path(out)))
        betas = np.asarray(info["betas"], dtype=np.float64)
        if beta is not None and not np.array_equal(load_schedule(beta), betas):
            raise DtoolsError(f"--beta {beta} differs from the schedule the run in {out} was trained with")
        saved = {**info["train"], "out": out}  # the folder named now: a run may have been moved or copied
        if data is not None:
            saved["data"] = data
        cfg = training.resume_config(saved, betas, options)
    else:
        if data is None:
            raise typer.BadParameter("give the DATA folder (or --resume an existing run)", param_hint="DATA")
        if beta is None:
            raise typer.BadParameter(
                "give a noise schedule: --beta beta.npy (from `dtools schedule cosine`) or --beta cosine",
                param_hint="--beta",
            )
        betas = load_schedule(beta)
        shape = dataset.peek(data)
        cfg = training.new_config(data, out, beta, betas, shape, options)

    if dry_run:
        from dtools.unet import UNet, UNetConfig, count_parameters

        n_params = count_parameters(UNet(UNetConfig.from_dict(cfg.model)))
        resolved = {**training.resolved_runtime(cfg), "parameters": n_params}
        typer.echo(json.dumps({"config": cfg.to_dict(), "resolved": resolved, "resume": resume}, indent=2))
        return

    result = training.train(cfg, betas, resume=resume, force=force)
    ckpt = result.run / training.MODEL_FILE
    if result.stopped == "interrupted":
        typer.echo(
            f"interrupted at step {result.step}/{result.total_steps}; saved {ckpt}; "
            f"continue with: dtools train --resume -o {result.run}",
            err=True,
        )
        raise typer.Exit(130)
    how = "time budget (--max-minutes) used up" if result.stopped == "max_minutes" else "done"
    loss = "-" if result.loss is None else f"{result.loss:.4g}"
    typer.echo(
        f"{how}: step {result.step}/{result.total_steps}, loss {loss} (mean of {cfg.log_every} steps), "
        f"{result.elapsed / 60:.1f} min in all; wrote {ckpt}",
        err=True,
    )
