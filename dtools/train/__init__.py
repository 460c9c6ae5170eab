"""Training of `dtools train`: a DDPM noise predictor trained as the seed report describes, and the
seed's two baselines, a DCGAN and a VAE (`--model dcgan|vae`, train/gan.py and train/vae.py), through
the same loop.

One step (Ho et al. 2020, Algorithm 1): take a batch x0 of images in [-1, 1] (randomly flipped),
draw t ~ U{0..T-1} and ε ~ N(0, I), form x_t = sqrt(ᾱ_t) x0 + sqrt(1-ᾱ_t) ε, and regress the network
output on the target of the parameterization (ε, x0, v or EDM's F) with a per-sample weighted MSE (plain by
default, Min-SNR-γ optionally). Adam updates the weights; an EMA of them is what `sample` uses.

A run folder RUN holds (all written atomically, every --save-every steps and at the end):
  model.safetensors        EMA weights + raw weights ("raw." prefix) + JSON header (dtools.checkpoint)
  train-state.safetensors  everything --resume needs to continue bit for bit (dtools.train.state)
  metrics.jsonl            one JSON line per --log-every steps: step, loss, lr, grad_norm, img_per_s, elapsed
  loss.png                 the loss curve (raw and smoothed, log scale); a GAN's: loss_d and loss_g
  accuracy.png             a GAN's discriminator accuracy on real and fake images
  samples/step_XXXXXX.png  grids of EMA samples (dpm++2m, 20 steps, fixed seeds) every --sample-every steps
  config.json              the resolved configuration

The modules: config (TrainConfig and its options' flags), presets (the U-Nets' defaults by image
size), resolve (a new or resumed run's configuration from defaults and options), finetune
(--init-from), main (`configure`: which of those a command line asks for; `main`: the `train`
command's job), run (the run folder and its text files), loop (Trainer: one session of a run, the
same for every model), method (what a model brings to the Trainer), ddpm (the DDPM's method), gan and
vae (the baselines' methods), state (train-state.safetensors), data (the images in memory and the
seeded batch stream), estimate (the time a run takes, and --dry-run), memory (the memory a step
needs, and the refusal of a run that cannot fit), distributed (several
processes), signals (Ctrl-C), lr (the learning-rate schedule), summary (the last line).
"""

from dtools.train.config import MODEL_OPTIONS, OPTIONS, TrainConfig, flag
from dtools.train.estimate import dry_run
from dtools.train.loop import Trainer, TrainResult, train
from dtools.train.main import configure
from dtools.train.presets import PRESETS, preset_config, preset_for_size
from dtools.train.resolve import new_config, resume_config
from dtools.train.run import (
    CONFIG_FILE,
    LOSS_PLOT,
    METRICS_FILE,
    MODEL_FILE,
    SAMPLES_DIR,
    STATE_FILE,
    append_metric,
)
from dtools.train.summary import summary

__all__ = [
    "CONFIG_FILE", "LOSS_PLOT", "METRICS_FILE", "MODEL_FILE", "MODEL_OPTIONS", "OPTIONS", "PRESETS",
    "SAMPLES_DIR", "STATE_FILE", "TrainConfig", "TrainResult", "Trainer", "append_metric", "configure",
    "dry_run", "flag", "new_config", "preset_config", "preset_for_size", "resume_config", "summary", "train",
]
