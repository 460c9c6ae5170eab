"""`dtools train`: train a DDPM noise predictor (or a DCGAN or VAE baseline) on a folder of prepared images,
with EMA and exact resume."""

from __future__ import annotations

import json
import sys

import typer

from dtools.errors import DtoolsError, OptionError

_MODEL_HELP = (
    "What to train: unet (the DDPM), or the seed's baselines dcgan (Radford et al. 2016; Adam lr 2e-4, "
    "β1 0.5, batch 128) and vae (a convolutional VAE with a Gaussian decoder; lr 1e-3, batch 128). "
    "[default: unet]"
)
_PRESET_HELP = (
    "Model preset: auto picks by image size (<=16: cpu16, <=32: cpu32, else seed64, the seed's U-Net). "
    "cpu16/cpu32 default to lr 1e-3, batch 16, EMA warm-up, grad-clip 1, 2000 steps (chosen by measured "
    "runs on a 2-core CPU, docs/train.md); seed64 to the seed's lr 1e-4, batch 128, EMA 0.999, 25000 steps."
)


def train(
    ctx: typer.Context,  # its params: every option below is named like the TrainConfig field it sets
    data: str = typer.Argument(
        None, metavar="DATA",
        help="Folder of prepared square images (or a uint8 .npy batch); optional with --resume.",
    ),
    beta: str = typer.Option(
        None, "--beta", "-b",
        help="Noise schedule (unet only): a .npy of betas ('-' = stdin) or a name [default: cosine]."
    ),
    out: str = typer.Option(..., "-o", "--out", help="Run folder: checkpoints, metrics, curves, samples."),
    model_type: str = typer.Option(None, "--model", help=_MODEL_HELP),
    parameterization: str = typer.Option(
        None, "--param", help="What the network predicts: eps (the seed's), x0 or v."
    ),
    preset: str = typer.Option(None, "--preset", help=_PRESET_HELP + " [default: auto]"),
    base_channels: int = typer.Option(
        None, "--base-channels", min=1,
        help="Width: the U-Net's level-1 channels [preset]; dcgan/vae: the channels next to the image [64]."
    ),
    latent_dim: int = typer.Option(None, "--latent-dim", min=1, help="dcgan/vae: size of z [100]."),
    d_steps: str = typer.Option(
        None, "--d-steps", help="dcgan: D:G, discriminator updates then generator updates per step; 1:2 "
        "updates G twice per D update (the seed's choice) [1:1]."
    ),
    kl_weight: float = typer.Option(None, "--kl-weight", help="vae: weight of the KL term, 1: the ELBO [1]."),
    channel_mult: str = typer.Option(None, "--channel-mult",
                                     help="U-Net: channel multiplier per level: 1,2,4."),
    num_res_blocks: int = typer.Option(None, "--res-blocks", min=1, help="U-Net: residual blocks per level."),
    attention_resolutions: str = typer.Option(
        None, "--attention", help="U-Net: resolutions with self-attention: 16, or none."
    ),
    num_heads: int = typer.Option(None, "--heads", min=1, help="U-Net: attention heads."),
    dropout: float = typer.Option(None, "--dropout", min=0.0, max=0.99,
                                  help="U-Net: dropout in residual blocks."),
    lr: float = typer.Option(None, "--lr", min=0.0,
                             help="Adam learning rate [default: from the preset, or --model's]."),
    batch_size: int = typer.Option(None, "--batch", min=1,
                                   help="Images per step [default: from the preset, or --model's]."),
    grad_accum: int = typer.Option(
        None, "--grad-accum", min=1,
        help="Split each batch into N micro-batches (same maths, less memory) [1]."
    ),
    warmup: float = typer.Option(
        None, "--warmup", min=0.0, max=0.99,
        help="Learning-rate warm-up, as a fraction of the run (its steps, or its minutes) [preset].",
    ),
    lr_decay: str = typer.Option(
        None, "--lr-decay",
        help="After the warm-up the lr falls to 0 at the run's end: cosine, linear, or constant [preset].",
    ),
    ema_decay: float = typer.Option(
        None, "--ema", min=0.0, max=0.99999,
        help="A fixed EMA decay of the sampling weights (instead of --ema-length) [0.999].",
    ),
    ema_length: float = typer.Option(
        None, "--ema-length", min=0.0, max=0.49,
        help="EDM2's power EMA: the average's width as a fraction of the run, e.g. 0.1 [preset].",
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
        None, "--max-steps", min=1,
        help="Stop at this TOTAL step (a resumed run stops where a straight one would)."
    ),
    epochs: float = typer.Option(None, "--epochs", min=0.0,
                                 help="Stop after this many passes over the data."),
    max_minutes: float = typer.Option(
        None, "--max-minutes", min=0.0,
        help="Training minutes. Alone: the run's length (its lr schedule spans it; --resume continues "
        "to it); with --max-steps or --epochs: a cap on this session.",
    ),
    seed: int = typer.Option(None, "--seed", help="Seed of init, shuffling and noise [default: 0]."),
    save_every: int = typer.Option(None, "--save-every", min=1,
                                   help="Checkpoint every N steps [default: preset]."),
    sample_every: int = typer.Option(
        None, "--sample-every", min=0, help="EMA sample grid every N steps and at the end; 0 = off [preset]."
    ),
    sample_count: int = typer.Option(None, "--samples", min=1, help="Images per sample grid [default: 16]."),
    log_every: int = typer.Option(None, "--log-every", min=1,
                                  help="A metrics.jsonl line every N steps [10]."),
    precision: str = typer.Option(
        None, "--precision", help="auto, bf16, fp16 or fp32. auto: bf16 on GPUs with it (else fp16) and on "
        "CPUs with AMX (else fp32); docs/performance.md."
    ),
    device: str = typer.Option(None, "--device", help="auto, cpu or cuda [default: auto]."),
    compile: bool = typer.Option(
        None, "--compile/--no-compile",
        help="torch.compile the networks in place [default: on for CUDA; off on CPU, where compiling "
        "took 108 s and saved 2% per step (measured, docs/train.md)].",
    ),
    init_from: str = typer.Option(
        None, "--init-from", metavar="CKPT",
        help="Fine-tune: start a new run from this checkpoint's (or run folder's) weights; the network, and "
        "for unet the schedule and --param, come from it; new data, lr, steps.",
    ),
    init_weights: str = typer.Option(
        None, "--init-weights", help="With --init-from: ema (the sampling weights) or raw. [default: ema]"
    ),
    nproc: int = typer.Option(
        1, "--nproc", min=1, help="Train in N processes on this machine (DistributedDataParallel through "
        "torchrun: one per GPU, or CPU processes); --batch stays the global batch. Several machines: "
        "docs/distributed.md."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in RUN from its last checkpoint."),
    force: bool = typer.Option(False, "--force", "-f",
                               help="Start over in an existing RUN (deletes its files)."),
    dry_run: bool = typer.Option(False, "--dry-run",
                                 help="Print the resolved configuration as JSON and exit."),
) -> None:
    """Train a DDPM noise predictor (U-Net, Adam, EMA) on a folder of prepared images.

    Writes RUN/model.safetensors (EMA + raw weights; what `dtools sample` reads), RUN/train-state.safetensors
    (for --resume), RUN/metrics.jsonl, RUN/loss.png and RUN/samples/step_XXXXXX.png, all atomically,
    every --save-every steps and at the end. Ctrl-C saves a checkpoint before stopping; a killed run
    continues with --resume from its last checkpoint. `--model dcgan` or `--model vae` trains the seed's
    baselines on the same data with the same outputs (a GAN also writes RUN/accuracy.png); options
    that do not apply to the model are refused.

    \b
    Examples:
      dtools prep twemoji data/ --size 32
      dtools schedule cosine -T 1000 > beta.npy
      dtools train data/ --beta beta.npy -o runs/emoji --max-steps 2000
      dtools schedule cosine -T 1000 | dtools train data/ --beta - -o runs/emoji --max-minutes 10
      dtools train --resume -o runs/emoji --max-steps 4000
      dtools train data/ --beta cosine -o runs/v --param v --min-snr-gamma 5 --dry-run
      dtools sample runs/emoji/model.safetensors | dtools grid -o samples.png
      dtools train data/ --model dcgan --d-steps 1:2 -o runs/gan --max-minutes 10
      dtools train mine/ -o runs/mine --init-from runs/emoji --lr 2e-4 --max-steps 500
      dtools train data/ --beta cosine -o runs/ddp --nproc 4 --batch 512
    """
    from dtools import train as training
    from dtools.train import distributed

    if resume and force:
        raise typer.BadParameter(
            "--resume continues RUN, --force starts it over: give one", param_hint="--force"
        )
    try:
        # the parameters are named like TrainConfig's fields (and the U-Net's options): no key list here
        options = {name: value for name, value in ctx.params.items() if name in training.OPTIONS}
        processes = max(nproc, distributed.env_rank()[1])
        distributed.check(processes, beta=beta)
        cfg = training.configure(out, data, beta, options, resume=resume)
        distributed.check(processes, cfg=cfg)
        if dry_run:
            typer.echo(json.dumps(training.dry_run(cfg, resume=resume), indent=2))
            return
        if nproc > 1:
            raise typer.Exit(distributed.launch(distributed.without_nproc(sys.argv[1:]), nproc))
        result = training.train(cfg, resume=resume, force=force)
    except DtoolsError as e:  # of several processes, one says it (dtools.train.distributed.speaks)
        if not distributed.speaks(e):
            raise typer.Exit(2 if isinstance(e, OptionError) else 1) from None
        raise
    if result.rank:  # one process of several: rank 0 reports
        raise typer.Exit(130 if result.stopped == "interrupted" else 0)
    if result.stopped == "interrupted":
        ckpt = result.run / training.MODEL_FILE
        typer.echo(f"interrupted at step {result.step}"
                   f"{'' if result.total_steps is None else '/' + str(result.total_steps)}; saved {ckpt}; "
                   f"continue with: dtools train --resume -o {result.run}", err=True)
        raise typer.Exit(130)
    typer.echo(training.summary(result), err=True)
