"""The configuration of a training run, in one vocabulary.

TrainConfig has one field per `dtools train` option, and each such field names its flag once (in its
metadata); the U-Net options that a user may set on top of a preset are named in MODEL_OPTIONS, next
to it. Messages take their flags from there. The schedule's exact betas travel inside the config but
stay out of `to_dict()` (config.json, the checkpoints' "train" header): the checkpoints keep them in
their own top-level "betas".

PRESETS is the one preset table: each preset's U-Net (by image size) and its training defaults.
`configure` resolves the configuration of a new run (the preset, then the user's options) or of a
resumed one (the saved configuration, with the few options that may change).
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

from dtools.diffusion import PARAMETERIZATIONS
from dtools.errors import DtoolsError, OptionError
from dtools.fileio import load_schedule
from dtools.runtime import Runtime, resolve
from dtools.train.data import peek
from dtools.train.run import resumable_state
from dtools.train.state import read_state_header
from dtools.unet import UNet, UNetConfig, count_parameters

# ---------------------------------------------------------------------------------------------
# Presets, chosen by image size. "seed64" is the seed report's network and recipe; the CPU presets
# were sized by short measured runs on a 2-core CPU (docs/train.md, "How the CPU presets were chosen")
# to learn emoji-like blobs in minutes.


@dataclass(frozen=True)
class Preset:
    """A U-Net for an image size, and the training defaults that come with it (options override them)."""

    summary: str
    build: Callable[[int, int], UNetConfig]  # (image_size, channels) -> config
    lr: float
    batch_size: int
    ema_warmup: bool
    max_steps: int  # the default only when neither --max-steps nor --epochs is given
    save_every: int
    sample_every: int
    grad_clip: float | None

    def defaults(self) -> dict[str, Any]:
        """The TrainConfig fields this preset sets (all but max_steps)."""
        return {"lr": self.lr, "batch_size": self.batch_size, "ema_warmup": self.ema_warmup,
                "save_every": self.save_every, "sample_every": self.sample_every, "grad_clip": self.grad_clip}


def _seed64(size: int, channels: int) -> UNetConfig:
    # 3 levels, 64 base channels doubling, attention at the deepest level (16x16 for 64x64 input)
    return UNetConfig(size, channels, 64, (1, 2, 4), 2, (size // 4,), num_heads=4, dropout=0.1)


def _cpu32(size: int, channels: int) -> UNetConfig:
    return UNetConfig(size, channels, 32, (1, 2, 2), 1, (size // 4,), num_heads=2, dropout=0.0, norm_groups=8)


def _cpu16(size: int, channels: int) -> UNetConfig:
    return UNetConfig(size, channels, 32, (1, 2), 1, (size // 2,), num_heads=2, dropout=0.0, norm_groups=8)


_CPU = {"lr": 1e-3, "batch_size": 16, "ema_warmup": True, "max_steps": 2000, "save_every": 250,
        "sample_every": 500, "grad_clip": 1.0}
PRESETS: dict[str, Preset] = {
    "cpu16": Preset("16x16: 2 levels, 32 base channels (1,2), 1 block per level, attention at 8x8", _cpu16,
                    **_CPU),
    "cpu32": Preset("32x32: 3 levels, 32 base channels (1,2,2), 1 block per level, attention at 8x8", _cpu32,
                    **_CPU),
    "seed64": Preset("64x64, the seed: 3 levels, 64 base channels (1,2,4), 2 blocks, attention 16", _seed64,
                     lr=1e-4, batch_size=128, ema_warmup=False, max_steps=25_000, save_every=1000,
                     sample_every=1000, grad_clip=None),
}


def preset_for_size(image_size: int) -> str:
    """The preset `auto` picks: cpu16 up to 16 pixels, cpu32 up to 32, else the seed's network."""
    if image_size <= 16:
        return "cpu16"
    if image_size <= 32:
        return "cpu32"
    return "seed64"


def resolve_preset(name: str, image_size: int) -> str:
    """The preset that --preset `name` stands for (`auto`: by image size); an unknown name is an error."""
    resolved = preset_for_size(image_size) if name == "auto" else name
    if resolved not in PRESETS:
        raise DtoolsError(f"unknown --preset {name!r}; choose auto or one of {', '.join(PRESETS)}")
    return resolved


def preset_config(name: str, image_size: int, channels: int) -> UNetConfig:
    """The U-Net of preset `name` (or `auto`) for images of `image_size` pixels and `channels`."""
    return PRESETS[resolve_preset(name, image_size)].build(image_size, channels)


# ---------------------------------------------------------------------------------------------
# The configuration and its flags


def _option(default: Any, flag: str, *, resumable: bool = False) -> Any:
    """A TrainConfig field set by the option `flag`; `resumable`: it may change when a run resumes."""
    return field(default=default, metadata={"flag": flag, "resumable": resumable})


@dataclass(frozen=True)
class ModelOption:
    """A U-Net option that a user may set on top of the preset."""

    flag: str
    ints: bool = False  # a list of integers, written like 1,2,2 on the command line


MODEL_OPTIONS: dict[str, ModelOption] = {  # UNetConfig field -> its option
    "base_channels": ModelOption("--base-channels"),
    "channel_mult": ModelOption("--channel-mult", ints=True),
    "num_res_blocks": ModelOption("--res-blocks"),
    "attention_resolutions": ModelOption("--attention", ints=True),
    "num_heads": ModelOption("--heads"),
    "dropout": ModelOption("--dropout"),
}


@dataclass
class TrainConfig:
    """The resolved training configuration: one field per `dtools train` option, plus the data facts
    and the schedule's exact betas."""

    data: str
    out: str
    beta: str  # what --beta named: a .npy file or a schedule name
    T: int
    image_size: int
    channels: int
    num_images: int
    preset: str = field(metadata={"flag": "--preset"})
    model: dict[str, Any]  # the resolved UNetConfig (to_dict), set through MODEL_OPTIONS
    betas: np.ndarray = field(repr=False, compare=False)  # float64 [T]; not part of to_dict()
    parameterization: str = _option("eps", "--param")
    lr: float = _option(1e-4, "--lr")
    batch_size: int = _option(128, "--batch")
    grad_accum: int = _option(1, "--grad-accum")
    ema_decay: float = _option(0.999, "--ema")
    ema_warmup: bool = _option(False, "--ema-warmup")
    min_snr_gamma: float | None = _option(None, "--min-snr-gamma")
    grad_clip: float | None = _option(None, "--grad-clip")
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

    def __post_init__(self) -> None:
        self.betas = np.asarray(self.betas, dtype=np.float64)
        if self.grad_clip == 0:
            self.grad_clip = None  # --grad-clip 0 turns clipping off

    def total_steps(self) -> int:
        """Where the run stops: --max-steps, or --epochs worth of batches, whichever comes first."""
        limits = [self.max_steps] if self.max_steps is not None else []
        if self.epochs is not None:
            limits.append(math.ceil(self.epochs * self.num_images / self.batch_size))
        return min(limits)

    def to_dict(self) -> dict[str, Any]:
        """Every field but the betas: what config.json and the checkpoints' "train" header hold."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in _FIELDS.values() if f.name != "betas"}

    @classmethod
    def from_dict(cls, d: dict[str, Any], betas: np.ndarray) -> TrainConfig:
        """Rebuild a saved configuration (`to_dict()`) with its schedule's `betas`."""
        try:
            return cls(**{k: v for k, v in d.items() if k in _FIELDS and k != "betas"}, betas=betas)
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
        for name in ("min_snr_gamma", "grad_clip", "epochs", "max_minutes", "max_steps"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise DtoolsError(f"{flag(name)} must be positive, got {v}")
        if self.sample_every < 0:
            raise DtoolsError(f"{flag('sample_every')} must be 0 (off) or positive, got {self.sample_every}")
        if self.max_steps is None and self.epochs is None:
            raise DtoolsError(f"give {flag('max_steps')} or {flag('epochs')}")
        if self.parameterization not in PARAMETERIZATIONS:
            choices = ", ".join(PARAMETERIZATIONS)
            raise DtoolsError(
                f"unknown {flag('parameterization')} {self.parameterization!r}; choose one of {choices}"
            )
        # ε-prediction cannot work when ᾱ_T = 0: x_T is pure noise, so predicting ε says nothing about x0
        if self.parameterization == "eps" and np.prod(1.0 - self.betas) == 0.0:
            raise DtoolsError(
                "the schedule has zero terminal SNR (ᾱ_T = 0), where an ε-prediction cannot recover x0; "
                f"train with {flag('parameterization')} v (or x0)"
            )
        UNetConfig.from_dict(self.model)
        return self


_FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(TrainConfig)}

# What `dtools train` passes in its options dict: the fields that have a flag, then the model options.
OPTIONS: tuple[str, ...] = (*(n for n, f in _FIELDS.items() if "flag" in f.metadata), *MODEL_OPTIONS)


def flag(name: str) -> str:
    """The command-line flag that sets the TrainConfig field or model option `name`."""
    return MODEL_OPTIONS[name].flag if name in MODEL_OPTIONS else _FIELDS[name].metadata["flag"]


def resumable(name: str) -> bool:
    """Whether option `name` may change when a run resumes (the rest would break its continuity)."""
    return name in _FIELDS and _FIELDS[name].metadata.get("resumable", False)


# ---------------------------------------------------------------------------------------------
# Resolving a run's configuration


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
    if beta is None:
        raise OptionError("--beta", "give a noise schedule: --beta beta.npy (from `dtools schedule cosine`) "
                          "or --beta cosine")
    betas = load_schedule(beta)
    return new_config(data, out, beta, betas, peek(data), options)


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
    betas = np.asarray(info["betas"], dtype=np.float64)
    if beta is not None and not np.array_equal(load_schedule(beta), betas):
        raise DtoolsError(f"--beta {beta} differs from the schedule the run in {out} was trained with")
    saved = {**info["train"], "out": out}  # the folder named now: a run may have been moved or copied
    if data is not None:
        saved["data"] = data
    return resume_config(saved, betas, options)


def new_config(
    data: str, out: str, beta: str, betas: np.ndarray, shape: tuple[int, int, int, int],
    options: dict[str, Any],
) -> TrainConfig:
    """Resolve a new run's configuration: the preset for the image size, then the user's options.

    `shape` is the data's (N, H, W, C); `options` maps OPTIONS names to the values given on the
    command line, None where the user gave none.
    """
    n, h, w, c = shape
    if h != w:
        raise DtoolsError(f"{data}: images are {w}x{h}; the U-Net needs square images (dtools prep --size N)")
    opts = {k: v for k, v in options.items() if v is not None}
    name = resolve_preset(opts.pop("preset", "auto"), h)
    preset = PRESETS[name]
    model = preset.build(h, c).to_dict()
    for key, option in MODEL_OPTIONS.items():
        if key in opts:
            value = opts.pop(key)
            model[key] = list(value) if option.ints else value
    defaults = preset.defaults()
    if "max_steps" not in opts and "epochs" not in opts:
        defaults["max_steps"] = preset.max_steps
    unknown = set(opts) - set(_FIELDS)
    assert not unknown, unknown
    betas = np.asarray(betas, dtype=np.float64)
    cfg = TrainConfig(
        data=str(data), out=str(out), beta=str(beta), T=int(betas.shape[0]), image_size=h, channels=c,
        num_images=n, preset=name, model=UNetConfig.from_dict(model).to_dict(), betas=betas,
        **{**defaults, **opts},
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


def dry_run(cfg: TrainConfig, *, resume: bool = False) -> dict[str, Any]:
    """What `dtools train --dry-run` prints: the configuration and what it resolves to."""
    rt = resolve(cfg.device, cfg.precision, cfg.compile)
    n_params = count_parameters(UNet(UNetConfig.from_dict(cfg.model)))
    facts = {**resolved(cfg, rt), "micro_batch": cfg.batch_size // cfg.grad_accum, "parameters": n_params}
    return {"config": cfg.to_dict(), "resolved": facts, "resume": resume}
