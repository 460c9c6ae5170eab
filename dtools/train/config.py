"""The configuration of a training run, in one vocabulary.

TrainConfig has one field per `dtools train` option, and each such field names its flag once (in its
metadata), with the models it applies to (`--model`: unet, the DDPM; dcgan; vae); the network options
that a user may set on top of a preset are named in MODEL_OPTIONS, next to it. Messages take their
flags from there. The schedule's exact betas travel inside the config but stay out of `to_dict()`
(config.json, the checkpoints' "train" header): the checkpoints keep them in their own top-level
"betas". `to_dict()` holds only the fields that apply to the run's model, so a DDPM run's config has
exactly the keys of dtools 0.1.0 (no "model_type": absent means unet, as in a checkpoint header).

PRESETS is the one preset table: each preset's U-Net (by image size) and its training defaults;
LATENT_MODELS holds the DCGAN's and the VAE's defaults. `configure` resolves the configuration of a
new run (the defaults, then the user's options) or of a resumed one (the saved configuration, with
the few options that may change).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dtools.diffusion import PARAMETERIZATIONS, T_DISTRIBUTIONS
from dtools.ema import MAX_SIGMA_REL
from dtools.errors import DtoolsError, OptionError
from dtools.fileio import load_schedule
from dtools.progress import log as log_line
from dtools.runtime import Runtime, resolve
from dtools.train.data import peek
from dtools.train.lr import DECAYS
from dtools.train.presets import (
    DDPM,
    LATENT,
    LATENT_MODELS,
    MODELS,
    PRESETS,
    networks,
    parse_ratio,
    preset_config,  # noqa: F401 (part of this module's interface)
    preset_for_size,
    resolve_preset,
)
from dtools.train.run import resumable_state
from dtools.train.state import read_state_header
from dtools.unet import UNetConfig, count_parameters

# ---------------------------------------------------------------------------------------------
# The configuration and its flags


def _option(default: Any, flag: str, *, resumable: bool = False, models: tuple[str, ...] = MODELS,
            omit_default: bool = False) -> Any:
    """A TrainConfig field set by the option `flag`; `resumable`: it may change when a run resumes;
    `models`: the --model values it applies to (the others refuse it and leave it out of to_dict);
    `omit_default`: to_dict leaves it out while it holds its default (a recipe option dtools 0.1.0 did
    not have, whose default is 0.1.0's behaviour, so its runs resume unchanged and write the same keys)."""
    return field(default=default, metadata={"flag": flag, "resumable": resumable, "models": models,
                                            "omit_default": omit_default})


@dataclass(frozen=True)
class ModelOption:
    """A network option that a user may set on top of the defaults."""

    flag: str
    ints: bool = False  # a list of integers, written like 1,2,2 on the command line
    models: tuple[str, ...] = DDPM  # the --model values whose network has it


MODEL_OPTIONS: dict[str, ModelOption] = {  # network config field -> its option
    "base_channels": ModelOption("--base-channels", models=MODELS),
    "channel_mult": ModelOption("--channel-mult", ints=True),
    "num_res_blocks": ModelOption("--res-blocks"),
    "attention_resolutions": ModelOption("--attention", ints=True),
    "num_heads": ModelOption("--heads"),
    "dropout": ModelOption("--dropout"),
    "latent_dim": ModelOption("--latent-dim", models=LATENT),
}


@dataclass
class TrainConfig:
    """The resolved training configuration: one field per `dtools train` option, plus the data facts
    and the schedule's exact betas."""

    data: str
    out: str
    beta: str | None = field(metadata={"models": DDPM})  # what --beta named: a .npy file or a schedule name
    T: int | None = field(metadata={"models": DDPM})
    image_size: int
    channels: int
    num_images: int
    preset: str | None = field(metadata={"flag": "--preset", "models": DDPM})
    model: dict[str, Any]  # the resolved network config (UNetConfig or DCGANConfig.to_dict())
    betas: np.ndarray = field(repr=False, compare=False)  # float64 [T] (empty: no schedule); not in to_dict()
    # absent from a DDPM run's to_dict(), like the 0.1.0 configs: a config without it is a "unet" run
    model_type: str = _option("unet", "--model")
    parameterization: str = _option("eps", "--param", models=DDPM)
    lr: float = _option(1e-4, "--lr")
    # the learning rate over the run (train/lr.py): a linear warm-up over this fraction of the run, then
    # a decay to 0 at its end (absent: constant, as in dtools 0.1.0)
    warmup: float = _option(0.0, "--warmup", omit_default=True)
    lr_decay: str = _option("constant", "--lr-decay", omit_default=True)
    batch_size: int = _option(128, "--batch-size")
    grad_accum: int = _option(1, "--grad-accum", models=DDPM)
    ema_decay: float = _option(0.999, "--ema")
    ema_warmup: bool = _option(False, "--ema-warmup")
    # EDM2's power-function EMA: the average's width as a fraction of the run (replaces --ema's decay)
    ema_length: float | None = _option(None, "--ema-length", omit_default=True)
    min_snr_gamma: float | None = _option(None, "--min-snr-gamma", models=DDPM)
    # the least Min-SNR weight on the noisy side (diffusion.loss_weight); absent: 0, as before it existed
    min_snr_floor: float = _option(0.0, "--min-snr-floor", models=DDPM, omit_default=True)
    # how a step draws t (dtools.diffusion.draw_timesteps); absent: uniform, as in dtools 0.1.0
    t_dist: str = _option("uniform", "--t-dist", models=DDPM, omit_default=True)
    grad_clip: float | None = _option(None, "--grad-clip", models=DDPM)
    d_steps: str | None = _option(None, "--d-steps", models=("dcgan",))  # D:G updates per step
    kl_weight: float | None = _option(None, "--kl-weight", models=("vae",))
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

    def __post_init__(self) -> None:
        self.betas = np.asarray(self.betas, dtype=np.float64)
        if self.grad_clip == 0:
            self.grad_clip = None  # --grad-clip 0 turns clipping off
        if self.min_snr_gamma == 0:
            self.min_snr_gamma = None  # --min-snr-gamma 0: plain MSE

    def images_per_step(self) -> int:
        """Training images one step takes from the data (a GAN step: one batch per discriminator update)."""
        return self.batch_size * (parse_ratio(self.d_steps)[0] if self.model_type == "dcgan" else 1)

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
                and not (f.name == "model_type" and self.model_type == "unet")
                and not (f.name in _INIT and self.init_from is None)
                and not (f.metadata.get("omit_default") and getattr(self, f.name) == f.default)}

    @classmethod
    def from_dict(cls, d: dict[str, Any], betas: np.ndarray) -> TrainConfig:
        """Rebuild a saved configuration (`to_dict()`) with its schedule's `betas`."""
        model_type = d.get("model_type", "unet")
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
        if self.init_weights not in ("ema", "raw"):
            raise DtoolsError(f"{flag('init_weights')} must be ema or raw, got {self.init_weights!r}")
        if self.model_type not in MODELS:
            raise DtoolsError(f"unknown {flag('model_type')} {self.model_type!r}; choose one of "
                              f"{', '.join(MODELS)}")
        if self.model_type != "unet":
            return self._validate_latent()
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
        UNetConfig.from_dict(self.model)
        return self

    def _validate_latent(self) -> TrainConfig:
        LATENT_MODELS[self.model_type].config.from_dict(self.model)
        if self.model_type == "dcgan":
            parse_ratio(self.d_steps)
        elif not (isinstance(self.kl_weight, int | float) and self.kl_weight > 0):
            raise OptionError(flag("kl_weight"), f"must be positive, got {self.kl_weight}")
        return self


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
    """Whether the TrainConfig field or model option `name` applies to a `model_type` run."""
    if name in MODEL_OPTIONS:
        return model_type in MODEL_OPTIONS[name].models
    return model_type in _FIELDS[name].metadata.get("models", MODELS)


def check_applies(options: dict[str, Any], model_type: str) -> None:
    """Refuse any given option (not None) that a `model_type` run has no use for."""
    for key, value in options.items():
        if value is not None and key in OPTIONS and not applies(key, model_type):
            models = MODEL_OPTIONS[key].models if key in MODEL_OPTIONS else _FIELDS[key].metadata["models"]
            raise DtoolsError(f"{flag(key)} applies to --model {' or '.join(models)}, not {model_type}; "
                              "drop it")


# ---------------------------------------------------------------------------------------------
# Resolving a run's configuration

DEFAULT_SCHEDULE = "cosine"  # --beta when none is given (Nichol & Dhariwal 2021; T = 1000)


def configure(
    out: str, data: str | None, beta: str | None, options: dict[str, Any], *, resume: bool = False
) -> TrainConfig:
    """The configuration of `dtools train -o OUT [DATA] [--beta BETA]` with `options` (OPTIONS names,
    None where not given; list options may be text like 1,2,2): a resumed run's, or a new one's."""
    options = {k: _ints(v, MODEL_OPTIONS[k].flag) if _is_ints(k) else v for k, v in options.items()}
    if resume:
        return _resumed(out, data, beta, options)
    if data is None:
        raise OptionError("DATA", "give the DATA folder (or --resume an existing run)")
    if options.get("init_weights") is not None and options.get("init_from") is None:
        raise OptionError("--init-weights", "applies with --init-from CKPT; drop it")
    if options.get("init_from") is not None:
        from dtools.train.finetune import init_config  # it builds on this module

        return init_config(out, data, beta, options)
    model_type = options.get("model_type") or "unet"
    if model_type != "unet":
        _refuse_beta(beta, model_type)
        return new_config(data, out, None, np.zeros(0), peek(data), options)
    beta = DEFAULT_SCHEDULE if beta is None else beta
    betas = load_schedule(beta)
    return new_config(data, out, beta, betas, peek(data), options)


def _refuse_beta(beta: str | None, model_type: str) -> None:
    if beta is not None:
        raise DtoolsError(f"--beta applies to --model unet, not {model_type} (it has no noise schedule); "
                          "drop it")


def _is_ints(name: str) -> bool:
    return name in MODEL_OPTIONS and MODEL_OPTIONS[name].ints


def _ints(text: str | tuple[int, ...] | None, option: str) -> tuple[int, ...] | None:
    """Integers written like 1,2,2 ('' or none: no integers)."""
    if not isinstance(text, str):
        return text
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        return tuple(int(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        raise OptionError(option, f"expected integers like 1,2,2, got {text!r}") from None


def _resumed(out: str, data: str | None, beta: str | None, options: dict[str, Any]) -> TrainConfig:
    info = read_state_header(resumable_state(Path(out)))
    if "betas" not in info:  # a model without a schedule
        _refuse_beta(beta, info["model_type"])
    betas = np.asarray(info.get("betas", []), dtype=np.float64)
    if beta is not None and not np.array_equal(load_schedule(beta), betas):
        raise DtoolsError(f"--beta {beta} differs from the schedule the run in {out} was trained with")
    saved = {**info["train"], "out": out}  # the folder named now: a run may have been moved or copied
    if data is not None:
        saved["data"] = data
    return resume_config(saved, betas, options)


def new_config(
    data: str, out: str, beta: str | None, betas: np.ndarray, shape: tuple[int, int, int, int],
    options: dict[str, Any],
) -> TrainConfig:
    """Resolve a new run's configuration: the defaults (for a U-Net, the preset for the image size),
    then the user's options.

    `shape` is the data's (N, H, W, C); `options` maps OPTIONS names to the values given on the
    command line, None where the user gave none. `beta` and `betas`: the schedule (a U-Net's only).
    """
    n, h, w, c = shape
    if h != w:
        net = "the U-Net" if options.get("model_type") in (None, "unet") else f"a {options['model_type']}"
        raise DtoolsError(f"{data}: images are {w}x{h}; {net} needs square images (dtools prep --size N)")
    opts = {k: v for k, v in options.items() if v is not None}
    model_type = opts.pop("model_type", "unet")
    if model_type not in MODELS:
        raise DtoolsError(f"unknown --model {model_type!r}; choose one of {', '.join(MODELS)}")
    check_applies(opts, model_type)
    auto = PRESETS[preset_for_size(h)]  # a latent model's run cadence: the U-Net preset's of its size
    name = resolve_preset(opts.pop("preset", "auto"), h) if model_type == "unet" else None
    preset = PRESETS[name] if name is not None else auto
    model = preset.build(h, c).to_dict() if name is not None else {"image_size": h, "channels": c}
    for key, option in MODEL_OPTIONS.items():
        if key in opts:
            value = opts.pop(key)
            model[key] = list(value) if option.ints else value
    if name is not None:
        defaults = preset.defaults()
        model = UNetConfig.from_dict(model).to_dict()
    else:
        defaults = {k: v for k, v in preset.defaults().items() if applies(k, model_type)}
        defaults.update(LATENT_MODELS[model_type].defaults)
        model = LATENT_MODELS[model_type].config.from_dict(model).to_dict()
    if "ema_decay" in opts:
        if "ema_length" in opts:
            raise DtoolsError(f"give {flag('ema_decay')} (a fixed decay) or {flag('ema_length')} (a "
                              "fraction of the run), not both")
        defaults["ema_length"] = None  # a decay given: the fixed-decay EMA
    if "max_steps" not in opts and "epochs" not in opts and "max_minutes" not in opts:
        defaults["max_steps"] = preset.max_steps
    unknown = set(opts) - set(_FIELDS)
    assert not unknown, unknown
    betas = np.asarray(betas, dtype=np.float64)
    cfg = TrainConfig(
        data=str(data), out=str(out), beta=None if beta is None else str(beta),
        T=int(betas.shape[0]) if name is not None else None, image_size=h, channels=c, num_images=n,
        preset=name, model=model, betas=betas, model_type=model_type, **{**defaults, **opts},
    )
    return cfg.validate()


def resume_config(saved: dict[str, Any], betas: np.ndarray, options: dict[str, Any]) -> TrainConfig:
    """A resumed run's configuration: the saved one, with the few options that may change (`resumable`)."""
    try:
        return _resume_config(saved, betas, options)
    except (TypeError, ValueError, AttributeError) as e:  # a hand-edited or damaged header
        raise DtoolsError(f"the saved training config is damaged ({e})") from None


def _resume_config(saved: dict[str, Any], betas: np.ndarray, options: dict[str, Any]) -> TrainConfig:
    cfg = TrainConfig.from_dict(saved, betas)
    if options.get("model_type") not in (None, cfg.model_type):
        raise DtoolsError(f"--model cannot change when resuming a run (it trains {cfg.model_type}); drop it, "
                          "or start a new run (another -o, or --force)")
    check_applies(options, cfg.model_type)
    for key, value in options.items():
        if value is None or key in ("data", "out"):
            continue
        if resumable(key):
            setattr(cfg, key, value)
        elif key in MODEL_OPTIONS or key == "preset" or getattr(cfg, key) != value:
            raise DtoolsError(f"{flag(key)} cannot change when resuming a run; drop it, or start a new run "
                              "(another -o, or --force)")
    return cfg.validate()


def resolved(cfg: TrainConfig, rt: Runtime) -> dict[str, Any]:
    """What `auto` and the limits resolved to (config.json's "resolved")."""
    return {"device": str(rt.device), "precision": rt.precision, "compile": rt.compile,
            "total_steps": cfg.total_steps()}


def dry_run(cfg: TrainConfig, *, resume: bool = False, log: Callable[[str], None] = log_line,
            estimate: bool = True) -> dict[str, Any]:
    """What `dtools train --dry-run` prints: the configuration and what it resolves to, and, with
    `estimate`, the time the run's steps would take, measured on a few steps (estimate.time_steps; its
    lines, and the warning about a tiny data set, go to `log`)."""
    from dtools.train import estimate as est  # it imports this module

    rt = resolve(cfg.device, cfg.precision, cfg.compile)
    counts = {name: count_parameters(net) for name, net in networks(cfg.model_type, cfg.model).items()}
    facts = {**resolved(cfg, rt), "micro_batch": cfg.batch_size // cfg.grad_accum,
             "parameters": sum(counts.values())}
    if len(counts) > 1:
        facts["parameters_by_network"] = counts
    out = {"config": cfg.to_dict(), "resolved": facts, "resume": resume}
    if estimate:
        timed = est.time_steps(cfg, rt)
        out["estimate"] = timed
        line, warning = est.estimate_lines(timed["seconds_per_step"], timed["steps"], timed["steps"], None,
                                           timed["how"])
        for text in (est.data_warning(cfg), line, warning):
            if text:
                log(text)
    return out
