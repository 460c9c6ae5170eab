"""`dtools train`: train a DDPM noise predictor (or a DCGAN or VAE baseline) on a folder of prepared images,
with EMA and exact resume."""

from __future__ import annotations

import sys

import typer

from dtools.choices import CONDS, LR_DECAYS, PARAMETERIZATIONS, PRESETS, T_DISTRIBUTIONS
from dtools.commands import options as opt
from dtools.models import DEFAULT_MODEL, LATENT, MODEL_TYPES, MODELS

_MODEL_HELP = (f"What to train: {MODEL_TYPES[DEFAULT_MODEL].help}, or the seed's baselines "
               f"{' and '.join(MODEL_TYPES[m].help for m in LATENT)}.")
_PRESET_HELP = (
    "Model preset: auto picks by image size (<=16: cpu16, <=32: cpu32, else seed64, the seed's U-Net). "
    "cpu16/cpu32 default to v-prediction with Min-SNR-5, lr 1e-3, batch 16, EMA warm-up, grad-clip 1, 2000 "
    "steps (chosen by measured FID on held-out images at equal CPU minutes, docs/quality.md); "
    "seed64 to the seed's ε-prediction, lr 1e-4, batch 128, EMA 0.999, 25000 steps."
)


def train(
    ctx: typer.Context,  # its params: every option below is named like the TrainConfig field it sets
    data: str = typer.Argument(
        None, metavar="DATA",
        help="Folder of prepared square images (or a uint8 .npy batch); optional with --resume.",
    ),
    beta: str = opt.beta(
        "Noise schedule (unet only): a .npy of betas ('-' = stdin) or a name.", show_default="cosine",
    ),
    out: str = opt.output("RUN, the run folder: checkpoints, metrics, curves, samples.", default=...,
                          show_default=None, metavar="RUN", old=("--out",)),
    model_type: str = opt.choice(None, "--model", choices=MODELS, help=_MODEL_HELP, show_default="unet"),
    parameterization: str = opt.choice(
        None, "--param", choices=PARAMETERIZATIONS, show_default="preset",
        help="What the network predicts: eps (the seed's; seed64), x0, v (cpu16/cpu32), or edm: "
        "Karras et al. 2022's preconditioning (c_in, c_skip, c_out; σ_data 0.5).",
    ),
    preset: str = opt.choice(None, "--preset", choices=PRESETS, help=_PRESET_HELP, show_default="auto"),
    base_channels: int = typer.Option(
        None, "--base-channels", min=1, show_default="preset; dcgan/vae: 64",
        help="Width: the U-Net's level-1 channels; dcgan/vae: the channels next to the image."
    ),
    latent_dim: int = typer.Option(None, "--latent-dim", min=1, help="dcgan/vae: size of z.",
                                   show_default="100"),
    d_steps: str = typer.Option(
        None, "--d-steps", metavar="D:G", show_default="1:1",
        help="dcgan: discriminator updates, then generator updates per step; 1:2 updates G twice per D "
        "update (the seed's choice).",
    ),
    kl_weight: float = typer.Option(None, "--kl-weight", help="vae: weight of the KL term, 1: the ELBO.",
                                    show_default="1"),
    channel_mult: str = typer.Option(None, "--channel-mult", metavar="M,M,...", show_default="preset",
                                     help="U-Net: channel multiplier per level, e.g. 1,2,4."),
    num_res_blocks: int = typer.Option(None, "--res-blocks", min=1, help="U-Net: residual blocks per level.",
                                       show_default="preset"),
    attention_resolutions: str = typer.Option(
        None, "--attention", metavar="RES,...|none", show_default="preset",
        help="U-Net: resolutions with self-attention, e.g. 16, or none.",
    ),
    num_heads: int = typer.Option(None, "--heads", min=1, help="U-Net: attention heads.",
                                  show_default="preset"),
    dropout: float = typer.Option(None, "--dropout", min=0.0, max=0.99, show_default="preset",
                                  help="U-Net: dropout in residual blocks."),
    lr: float = typer.Option(None, "--lr", min=0.0, help="Adam learning rate.",
                             show_default="the preset's, or --model's"),
    batch_size: int = opt.batch_size(None, help="Images per step.", old=("--batch",),
                                     show_default="the preset's, or --model's"),
    grad_accum: int = typer.Option(
        None, "--grad-accum", min=1, show_default="1",
        help="Split each batch into N micro-batches (same maths, less memory).",
    ),
    warmup: float = typer.Option(
        None, "--warmup", min=0.0, max=0.99, show_default="preset",
        help="Learning-rate warm-up, as a fraction of the run (its steps, or its minutes).",
    ),
    lr_decay: str = opt.choice(
        None, "--lr-decay", choices=LR_DECAYS, show_default="preset",
        help="After the warm-up the lr falls to 0 at the run's end: cosine, linear, wsd (constant, then "
             "linear over the last 20 %), or constant.",
    ),
    ema_decay: float = typer.Option(
        None, "--ema", min=0.0, max=0.99999, show_default="0.999",
        help="A fixed EMA decay of the sampling weights (instead of --ema-length).",
    ),
    ema_length: float = typer.Option(
        None, "--ema-length", min=0.0, max=0.3003, show_default="preset",  # ema.MAX_SIGMA_REL, rounded up
        help="EDM2's power EMA: the average's width as a fraction of the run, e.g. 0.1 (at most 0.3003).",
    ),
    posthoc_ema: int = typer.Option(
        None, "--posthoc-ema", min=0, metavar="N", show_default="0: none",
        help="Keep N snapshots of two power EMAs over the run (RUN/posthoc/), from which `dtools ema` "
        "makes an EMA of any length afterwards (EDM2's post-hoc EMA), e.g. 16.",
    ),
    ema_warmup: bool = typer.Option(
        None, "--ema-warmup/--no-ema-warmup", help="EMA decay min(decay, (1+n)/(10+n)).",
        show_default="preset",
    ),
    min_snr_gamma: float = typer.Option(
        None, "--min-snr-gamma", min=0.0, show_default="preset",
        help="Min-SNR-γ loss weight (Hang et al. 2023), e.g. 5; 0 = off: plain MSE.",
    ),
    min_snr_floor: float = typer.Option(
        None, "--min-snr-floor", min=0.0, max=1.0, show_default="preset",
        help="The least Min-SNR weight where SNR < 1, so the noisiest timesteps (where sampling starts) "
             "still train; 0 = Hang et al.'s weight.",
    ),
    learned_weight: bool = typer.Option(
        None, "--learned-weight/--no-learned-weight", show_default="off",
        help="EDM2's learned loss weighting (Karras et al. 2024): a learned u(σ) divides each noise "
             "level's loss by its running size, on top of --min-snr-gamma's weight.",
    ),
    t_dist: str = opt.choice(
        None, "--t-dist", choices=T_DISTRIBUTIONS, show_default="uniform",
        help="How a step draws t: uniform over 0..T-1 (Ho et al.), or lognormal: EDM's "
             "ln σ_t ~ N(-1.2, 1.2²) (Karras et al. 2022), more steps at mid noise levels.",
    ),
    grad_clip: float = typer.Option(
        None, "--grad-clip", min=0.0, help="Clip the gradient norm at this value; 0 = off.",
        show_default="preset",
    ),
    flip: bool = typer.Option(
        None, "--flip/--no-flip", show_default="flip for colour images, no-flip for grey ones",
        help="Random horizontal flips. Off by default for grey (1-channel) data: digits, letters and "
             "glyphs have a handedness, and mirrored ones are other shapes.",
    ),
    max_steps: int = typer.Option(
        None, "--max-steps", min=1, show_default="preset",
        help="Stop at this TOTAL step (a resumed run stops where a straight one would)."
    ),
    epochs: float = typer.Option(None, "--epochs", min=0.0, show_default="none",
                                 help="Stop after this many passes over the data."),
    max_minutes: float = typer.Option(
        None, "--max-minutes", min=0.0, show_default="none",
        help="Training minutes. Alone: the run's length (its lr schedule spans it; --resume continues "
        "to it); with --max-steps or --epochs: a cap on this session.",
    ),
    seed: int = opt.seed(None, help="Seed of init, shuffling and noise.", show_default="0"),
    save_every: int = typer.Option(None, "--save-every", min=1, show_default="preset",
                                   help="Checkpoint every N steps."),
    sample_every: int = typer.Option(
        None, "--sample-every", min=0, show_default="preset",
        help="EMA sample grid every N steps and at the end; 0 = off.",
    ),
    sample_count: int = typer.Option(None, "--samples", min=1, help="Images per sample grid.",
                                     show_default="16"),
    log_every: int = typer.Option(None, "--log-every", min=1, show_default="10",
                                  help="A metrics.jsonl line every N steps."),
    precision: str = opt.precision(
        "auto: bf16 on GPUs with it (else fp16) and on CPUs with AMX (else fp32); docs/performance.md.",
        default=None, show_default="auto",
    ),
    device: str = opt.device(None, show_default="auto"),
    compile: bool = typer.Option(
        None, "--compile/--no-compile", show_default="on for CUDA, off on the CPU",
        help="torch.compile the networks in place (on the CPU compiling took 108 s and saved 2% per step, "
        "docs/train.md).",
    ),
    init_from: str = typer.Option(
        None, "--init-from", metavar="CKPT", show_default="none: a new network",
        help="Fine-tune: start a new run from this checkpoint's (or run folder's) weights; the network, and "
        "for unet the schedule and --param, come from it; new data, lr, steps.",
    ),
    init_weights: str = opt.choice(
        None, "--init-weights", choices=("ema", "raw"), show_default="ema",
        help="With --init-from: ema (the sampling weights) or raw.",
    ),
    cond: str = opt.choice(
        None, "--cond", choices=CONDS, show_default="auto",
        help="unet: auto conditions on the classes of labelled data (DATA/dataset.json, written by prep for "
        "a folder per class); class insists; none trains unconditionally (docs/guidance.md).",
    ),
    cond_drop: float = typer.Option(
        None, "--cond-drop", min=0.0, max=0.99, show_default="0.1",
        help="Class-conditional unet: the share of each batch trained as the null class, so one network "
        "also predicts unconditionally (classifier-free guidance).",
    ),
    guide_at: float = typer.Option(
        None, "--guide-at", min=0.0, max=0.99, show_default="0.125",
        help="unet: keep RUN/guide.safetensors, the model at this fraction of the run, as a weaker model to "
        "guide the final one with (sample --guide RUN; autoguidance); 0 = none.",
    ),
    nproc: int = typer.Option(
        1, "--nproc", min=1, help="Train in N processes on this machine (DistributedDataParallel through "
        "torchrun: one per GPU, or CPU processes); --batch-size stays the global batch. Several machines: "
        "docs/distributed.md."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in RUN from its last checkpoint; with none yet, start it "
        "(so a preemptible job can always pass --resume)."),
    force: bool = opt.force("Start over in an existing RUN (deletes its files)."),
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
      dtools train data/ --beta cosine -o runs/ddp --nproc 4 --batch-size 512
      dtools prep mnist digits/ --size 32 --channels 1 && dtools train digits/ -o runs/digits
    """
    if resume and force:
        raise typer.BadParameter(
            "--resume continues RUN, --force starts it over: give one", param_hint="--force"
        )
    from dtools.train import OPTIONS
    from dtools.train.main import main

    # the parameters are named like TrainConfig's fields (and the U-Net's options): no key list here
    options = {name: value for name, value in ctx.params.items() if name in OPTIONS}
    code = main(out, data, beta, options, nproc=nproc, argv=sys.argv[1:], resume=resume, force=force,
                dry=dry_run, echo=typer.echo)
    if code:
        raise typer.Exit(code)
