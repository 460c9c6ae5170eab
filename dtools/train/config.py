"""The configuration of a training run, in one vocabulary.

TrainConfig has one field per `dtools train` option, and each such field names its flag once (in its
metadata), with the models it applies to (`--model`: unet, the DDPM; dcgan; vae); the network options
that a user may set on top of a preset are named in MODEL_OPTIONS, next to it. Messages take their
flags from there. The schedule's exact betas travel inside the config but stay out of `to_dict()`
(config.json, the checkpoints' "train" header): the checkpoints keep them in their own top-level
"betas". `to_dict()` holds only the fields that apply to the run's model, so a DDPM run's config has
exactly the keys of dtools 0.1.0 (no "model_type": absent means unet, as in a checkpoint header).

Which model an option applies to, and everything else a model type brings, comes from its spec
(dtools.models.MODEL_TYPES). Resolving a configuration from the defaults and the user's options is
dtools.train.resolve's job; dtools.train.main.configure picks a new, resumed or fine-tuning run's.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dtools.choices import CONDS
from dtools.diffusion import PARAMETERIZATIONS, T_DISTRIBUTIONS
from dtools.ema import MAX_SIGMA_REL
from dtools.errors import DtoolsError, OptionError
from dtools.models import (
    DEFAULT_MODEL,
    MODEL_TYPES,
    ModelType,
    any_model,
    lookup_model,
    only,
    scheduled,
    with_presets,
)
from dtools.runtime import Runtime
from dtools.train.lr import DECAYS

# ---------------------------------------------------------------------------------------------
# The configuration and its flags


# --guide-at: measured by bench/guidance.py auto (docs/guidance.md, "Autoguidance")
GUIDE_AT = 0.125  # FID 74.8 at w=1 against 79.4 (0.25), 94.2 (0.5), unguided 108.5
MAX_SNAPSHOTS = 1000  # --posthoc-ema: EDM2 kept about 60 over a run


def conditionable(kind: ModelType) -> bool:
    """A model type whose network can take a class (its config has `num_classes`)."""
    return "num_classes" in {f.name for f in dataclasses.fields(kind.config_class())}


def _option(default: Any, flag: str, *, resumable: bool = False,
            models: Callable[[ModelType], bool] = any_model,
            omit_default: bool = False) -> Any:
    """A TrainConfig field set by the option `flag`; `resumable`: it may change when a run resumes;
    `models`: which model types it applies to, a test of their spec (the others refuse it and leave it
    out of to_dict);
    `omit_default`: to_dict leaves it out while it holds its default (a recipe option dtools 0.1.0 did
    not have, whose default is 0.1.0's behaviour, so its runs resume unchanged and write the same keys)."""
    return field(default=default, metadata={"flag": flag, "resumable": resumable, "models": models,
                                            "omit_default": omit_default})


@dataclass(frozen=True)
class ModelOption:
    """A network option that a user may set on top of the defaults (of the model types whose network
    config has the field it sets)."""

    flag: str
    ints: bool = False  # a list of integers, written like 1,2,2 on the command line


MODEL_OPTIONS: dict[str, ModelOption] = {  # network config field -> its option
    "base_channels": ModelOption("--base-channels"),
    "channel_mult": ModelOption("--channel-mult", ints=True),
    "num_res_blocks": ModelOption("--res-blocks"),
    "attention_resolutions": ModelOption("--attention", ints=True),
    "num_heads": ModelOption("--heads"),
    "dropout": ModelOption("--dropout"),
    "latent_dim": ModelOption("--latent-dim"),
}


@dataclass
class TrainConfig:
    """The resolved training configuration: one field per `dtools train` option, plus the data facts
    and the schedule's exact betas."""

    data: str
    out: str
    beta: str | None = field(metadata={"models": scheduled})  # what --beta named: a .npy file or a name
    T: int | None = field(metadata={"models": scheduled})
    image_size: int
    channels: int
    num_images: int
    preset: str | None = field(metadata={"flag": "--preset", "models": with_presets})
    model: dict[str, Any]  # the resolved network config (UNetConfig or DCGANConfig.to_dict())
    betas: np.ndarray = field(repr=False, compare=False)  # float64 [T] (empty: no schedule); not in to_dict()
    # absent from a DDPM run's to_dict(), like the 0.1.0 configs: a config without it is a "unet" run
    model_type: str = _option(DEFAULT_MODEL, "--model")
    parameterization: str = _option("eps", "--param", models=scheduled)
    lr: float = _option(1e-4, "--lr")
    # the learning rate over the run (train/lr.py): a linear warm-up over this fraction of the run, then
    # a decay to 0 at its end (absent: constant, as in dtools 0.1.0)
    warmup: float = _option(0.0, "--warmup", omit_default=True)
    lr_decay: str = _option("constant", "--lr-decay", omit_default=True)
    batch_size: int = _option(128, "--batch-size")
    grad_accum: int = _option(1, "--grad-accum", models=scheduled)
    ema_decay: float = _option(0.999, "--ema")
    ema_warmup: bool = _option(False, "--ema-warmup")
    # EDM2's power-function EMA: the average's width as a fraction of the run (replaces --ema's decay)
    ema_length: float | None = _option(None, "--ema-length", omit_default=True)
    # post-hoc EMA (EDM2): this many snapshots of two power EMAs over the run, in RUN/posthoc/, from
    # which `dtools ema` makes an EMA of any length afterwards; 0: none (absent, as before it existed)
    posthoc_ema: int = _option(0, "--posthoc-ema", models=scheduled, omit_default=True)
    min_snr_gamma: float | None = _option(None, "--min-snr-gamma", models=scheduled)
    # the least Min-SNR weight on the noisy side (diffusion.loss_weight); absent: 0, as before it existed
    min_snr_floor: float = _option(0.0, "--min-snr-floor", models=scheduled, omit_default=True)
    # EDM2's learned loss weighting (train/uncertainty.py); absent: off, as before it existed
    learned_weight: bool = _option(False, "--learned-weight", models=scheduled, omit_default=True)
    # how a step draws t (dtools.diffusion.draw_timesteps); absent: uniform, as in dtools 0.1.0
    t_dist: str = _option("uniform", "--t-dist", models=scheduled, omit_default=True)
    grad_clip: float | None = _option(None, "--grad-clip", models=scheduled)
    d_steps: str | None = _option(None, "--d-steps", models=only("dcgan"))  # D:G updates per step
    kl_weight: float | None = _option(None, "--kl-weight", models=only("vae"))
    flip: bool = _option(True, "--flip")
    max_steps: int | None = _option(None, "--max-steps", resumable=True)
    epochs: float | None = _option(None, "--epochs", resumable=True)
    max_minutes: float | None = _option(None, "--max-minutes", resumable=True)
    seed: int = _option(0, "--seed")
    save_every: int = _option(1000, "--save-every", resumable=True)
    sample_every: int = _option(1000, "--sample-every", resumable=True)
    sample_count: int = _option(16, "--samples", resumable=True)
    log_every: int = _option(10, "--log-every", resumable=True)
    precision: str = _option("auto", "--precision", resumable=True)
    device: str = _option("auto", "--device", resumable=True)
    # None: on for CUDA, off for the CPU (measured, docs/train.md)
    compile: bool | None = _option(None, "--compile", resumable=True)
    data_fingerprint: str = ""
    # --init-from: the checkpoint whose weights (--init-weights) a new run starts from; both stay out of
    # to_dict() when it is None (a run's config then has the keys of dtools 0.1.0)
    init_from: str | None = _option(None, "--init-from")
    init_weights: str = _option("ema", "--init-weights")
    # what the network is conditioned on: auto = the data's classes when it has labels (dataset.json);
    # class = insist on them; none = unconditional on labelled data (docs/guidance.md)
    cond: str = _option("auto", "--cond", models=conditionable, omit_default=True)
    # label dropout: the share of a batch trained as the null class, so one network also predicts
    # unconditionally (classifier-free guidance, Ho & Salimans 2022)
    cond_drop: float = _option(0.1, "--cond-drop", models=conditionable, omit_default=True)
    # when the run keeps RUN/guide.safetensors, its EMA model so far, as a fraction of the run: a weaker
    # model of the same data and schedule, for autoguidance (sample --guide RUN); 0: none
    guide_at: float = _option(GUIDE_AT, "--guide-at", models=scheduled, omit_default=True)
    # the data's class names (index -> name) of a class-conditional run; None: unconditional
    classes: list[str] | None = field(default=None, metadata={"omit_default": True})

    def __post_init__(self) -> None:
        self.betas = np.asarray(self.betas, dtype=np.float64)
        if self.grad_clip == 0:
            self.grad_clip = None  # --grad-clip 0 turns clipping off
        if self.min_snr_gamma == 0:
            self.min_snr_gamma = None  # --min-snr-gamma 0: plain MSE

    @property
    def num_classes(self) -> int:
        """Classes of a class-conditional run (its network's null class is this index); 0: unconditional."""
        return len(self.classes) if self.classes else 0

    def progress(self, step: int, elapsed: float) -> float | None:
        """How far a run is, as a fraction of its length: by steps, or by time for a run sized in time."""
        total = self.total_steps()
        if total is not None:
            return step / total
        return elapsed / (60 * self.max_minutes) if self.max_minutes else None

    def images_per_step(self) -> int:
        """Training images one step takes from the data (a GAN step: one batch per discriminator update)."""
        return self.batch_size * (parse_ratio(self.d_steps)[0] if applies("d_steps", self.model_type) else 1)

    def total_steps(self) -> int | None:
        """Where the run stops: --max-steps, or --epochs worth of batches, whichever comes first; None
        for a run sized in time (--max-minutes alone)."""
        limits = [self.max_steps] if self.max_steps is not None else []
        if self.epochs is not None:
            limits.append(math.ceil(self.epochs * self.num_images / self.images_per_step()))
        return min(limits) if limits else None

    def time_sized(self) -> bool:
        """Whether the run is sized in time: --max-minutes without --max-steps or --epochs. Then
        --max-minutes is the run's whole training time (over all its sessions) and the learning-rate
        schedule runs over it; otherwise it caps one session."""
        return self.max_steps is None and self.epochs is None and self.max_minutes is not None

    def to_dict(self) -> dict[str, Any]:
        """Every field that applies to the model but the betas: what config.json and the checkpoints'
        "train" header hold."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in _FIELDS.values()
                if f.name != "betas" and applies(f.name, self.model_type)
                and not (f.name == "model_type" and self.model_type == DEFAULT_MODEL)
                and not (f.name in _INIT and self.init_from is None)
                and not (f.metadata.get("omit_default") and getattr(self, f.name) == f.default)}

    @classmethod
    def from_dict(cls, d: dict[str, Any], betas: np.ndarray) -> TrainConfig:
        """Rebuild a saved configuration (`to_dict()`) with its schedule's `betas`."""
        model_type = d.get("model_type", DEFAULT_MODEL)
        absent = {n: None for n, f in _FIELDS.items() if f.default is dataclasses.MISSING
                  and not applies(n, model_type)}  # beta, T and preset of a model without a schedule
        try:
            return cls(**absent, **{k: v for k, v in d.items() if k in _FIELDS and k != "betas"}, betas=betas)
        except TypeError as e:
            raise DtoolsError(f"training config is incomplete ({e})") from None

    def validate(self) -> TrainConfig:
        """Check every value; raise a one-line DtoolsError naming the option."""
        for name in ("lr", "batch_size", "grad_accum", "save_every", "sample_count", "log_every"):
            v = getattr(self, name)
            if not v > 0:
                raise DtoolsError(f"{flag(name)} must be positive, got {v}")
        if self.batch_size % self.grad_accum:
            raise DtoolsError(f"{flag('batch_size')} {self.batch_size} does not split into "
                              f"{flag('grad_accum')} {self.grad_accum} equal parts")
        if not 0 <= self.ema_decay < 1:
            raise DtoolsError(f"{flag('ema_decay')} must lie in [0, 1), got {self.ema_decay}")
        if not 0 <= self.warmup < 1:
            raise DtoolsError(f"{flag('warmup')} is a fraction of the run in [0, 1), got {self.warmup}")
        if self.lr_decay not in DECAYS:
            choices = ", ".join(DECAYS)
            raise OptionError(flag("lr_decay"), f"unknown {self.lr_decay!r}; choose one of {choices}")
        if self.ema_length is not None and not 0 < self.ema_length <= MAX_SIGMA_REL:
            raise DtoolsError(f"{flag('ema_length')} is the average's width as a fraction of the run, in "
                              f"(0, {MAX_SIGMA_REL:.4f}]: no power-function EMA is wider (EDM2, eq. 3); "
                              f"got {self.ema_length}")
        if not (isinstance(self.posthoc_ema, int) and 0 <= self.posthoc_ema <= MAX_SNAPSHOTS):
            raise OptionError(flag("posthoc_ema"), f"is a number of snapshots from 0 (none) to "
                              f"{MAX_SNAPSHOTS}, got {self.posthoc_ema}")
        if not 0 <= self.min_snr_floor <= 1:
            raise DtoolsError(f"{flag('min_snr_floor')} must lie in [0, 1], got {self.min_snr_floor}")
        for name in ("min_snr_gamma", "grad_clip", "epochs", "max_minutes", "max_steps"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise DtoolsError(f"{flag(name)} must be positive, got {v}")
        if self.sample_every < 0:
            raise DtoolsError(f"{flag('sample_every')} must be 0 (off) or positive, got {self.sample_every}")
        if self.max_steps is None and self.epochs is None and self.max_minutes is None:
            raise DtoolsError(f"give {flag('max_steps')}, {flag('epochs')} or {flag('max_minutes')}")
        if self.cond not in CONDS:
            raise OptionError(flag("cond"), f"unknown {self.cond!r}; choose one of {', '.join(CONDS)}")
        if not 0 <= self.guide_at < 1:
            raise OptionError(flag("guide_at"), f"is a fraction of the run in [0, 1) (0: no snapshot), got "
                              f"{self.guide_at}")
        if not 0 <= self.cond_drop < 1:
            raise OptionError(flag("cond_drop"), f"is a share of the batch in [0, 1), got {self.cond_drop}")
        if self.init_weights not in ("ema", "raw"):
            raise DtoolsError(f"{flag('init_weights')} must be ema or raw, got {self.init_weights!r}")
        kind = lookup_model(self.model_type, flag("model_type"))
        if kind.schedule:
            self._validate_schedule()
        if applies("d_steps", self.model_type):
            parse_ratio(self.d_steps)
        if applies("kl_weight", self.model_type) and not (isinstance(self.kl_weight, int | float)
                                                          and self.kl_weight > 0):
            raise OptionError(flag("kl_weight"), f"must be positive, got {self.kl_weight}")
        kind.network_config(self.model)
        return self

    def _validate_schedule(self) -> None:
        """A denoiser's options against its schedule."""
        if self.parameterization not in PARAMETERIZATIONS:
            choices = ", ".join(PARAMETERIZATIONS)
            raise DtoolsError(
                f"unknown {flag('parameterization')} {self.parameterization!r}; choose one of {choices}"
            )
        if self.t_dist not in T_DISTRIBUTIONS:
            choices = ", ".join(T_DISTRIBUTIONS)
            raise OptionError(flag("t_dist"), f"unknown {self.t_dist!r}; choose one of {choices}")
        # ε-prediction cannot work when ᾱ_T = 0: x_T is pure noise, so predicting ε says nothing about x0
        if self.parameterization == "eps" and np.prod(1.0 - self.betas) == 0.0:
            raise DtoolsError(
                "the schedule has zero terminal SNR (ᾱ_T = 0), where an ε-prediction cannot recover x0; "
                f"train with {flag('parameterization')} v (or x0)"
            )


_FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(TrainConfig)}
_INIT = ("init_from", "init_weights")

# What `dtools train` passes in its options dict: the fields that have a flag, then the model options.
OPTIONS: tuple[str, ...] = (*(n for n, f in _FIELDS.items() if "flag" in f.metadata), *MODEL_OPTIONS)


def flag(name: str) -> str:
    """The command-line flag that sets the TrainConfig field or model option `name`."""
    return MODEL_OPTIONS[name].flag if name in MODEL_OPTIONS else _FIELDS[name].metadata["flag"]


def resumable(name: str) -> bool:
    """Whether option `name` may change when a run resumes (the rest would break its continuity)."""
    return name in _FIELDS and _FIELDS[name].metadata.get("resumable", False)


def applies(name: str, model_type: str) -> bool:
    """Whether the TrainConfig field or model option `name` applies to a `model_type` run: a model option
    where the model type's network config has that field, any other as its field says (`_option`)."""
    kind = MODEL_TYPES.get(model_type)
    if kind is None:
        return False
    if name in MODEL_OPTIONS:
        return name in {f.name for f in dataclasses.fields(kind.config_class())}
    return _FIELDS[name].metadata.get("models", any_model)(kind)


def check_applies(options: dict[str, Any], model_type: str) -> None:
    """Refuse any given option (not None) that a `model_type` run has no use for."""
    for key, value in options.items():
        if value is not None and key in OPTIONS and not applies(key, model_type):
            models = [name for name in MODEL_TYPES if applies(key, name)]
            raise DtoolsError(f"{flag(key)} applies to --model {' or '.join(models)}, not {model_type}; "
                              "drop it")


def parse_ratio(text: str) -> tuple[int, int]:
    """--d-steps D:G -> (D, G): per training step, D discriminator updates, then G generator updates."""
    try:
        d, g = (int(v) for v in str(text).split(":"))
    except ValueError:
        raise OptionError("--d-steps", f"expects D:G like 1:2 (discriminator:generator updates), "
                          f"got {text!r}") from None
    if d < 1 or g < 1:
        raise OptionError("--d-steps", f"{text}: both numbers must be at least 1")
    return d, g


def resolved(cfg: TrainConfig, rt: Runtime) -> dict[str, Any]:
    """What `auto` and the limits resolved to (config.json's "resolved")."""
    return {"device": str(rt.device), "precision": rt.precision, "compile": rt.compile,
            "total_steps": cfg.total_steps()}
