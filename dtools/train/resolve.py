"""A run's configuration resolved from its defaults and the user's options: `new_config` for a new run
(the preset for the image size or the model type's own recipe, then the options), `resume_config` for
a resumed one (the saved configuration, with the few options that may change), and `schedule_of`,
the schedule a run uses when --beta is given or not.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dtools.errors import DtoolsError, OptionError
from dtools.models import DEFAULT_MODEL, lookup_model
from dtools.schedule_io import load_schedule
from dtools.train.config import (
    _FIELDS,
    MODEL_OPTIONS,
    TrainConfig,
    applies,
    check_applies,
    conditionable,
    flag,
    resumable,
)
from dtools.train.presets import PRESETS, preset_for_size, resolve_preset

DEFAULT_SCHEDULE = "cosine"  # --beta when none is given (Nichol & Dhariwal 2021; T = 1000)


def schedule_of(beta: str | None, saved: np.ndarray) -> np.ndarray:
    """The schedule of a run that has one already (`saved`: a resumed run's, a fine-tuned checkpoint's):
    the one --beta names when given, else the saved one."""
    return np.asarray(saved, dtype=np.float64) if beta is None else load_schedule(beta)


def new_config(
    data: str, out: str, beta: str | None, betas: np.ndarray, shape: tuple[int, int, int, int],
    options: dict[str, Any], classes: tuple[str, ...] | None = None,
) -> TrainConfig:
    """Resolve a new run's configuration: the defaults (for a U-Net, the preset for the image size),
    then the user's options.

    `shape` is the data's (N, H, W, C); `options` maps OPTIONS names to the values given on the
    command line, None where the user gave none. `beta` and `betas`: the schedule (a denoiser's only).
    `classes`: the data's class names when it is labelled; with --cond auto or class, a network that
    can take a class is conditioned on them.
    """
    n, h, w, c = shape
    if h != w:
        given = options.get("model_type")
        net = "the U-Net" if given in (None, DEFAULT_MODEL) else f"a {given}"
        raise DtoolsError(f"{data}: images are {w}x{h}; {net} needs square images (dtools prep --size N)")
    opts = {k: v for k, v in options.items() if v is not None}
    name = opts.pop("model_type", DEFAULT_MODEL)
    kind = lookup_model(name)
    check_applies(opts, name)
    auto = PRESETS[preset_for_size(h)]  # a latent model's run cadence: the U-Net preset's of its size
    preset_name = resolve_preset(opts.pop("preset", "auto"), h) if kind.presets else None
    preset = PRESETS[preset_name] if preset_name is not None else auto
    model = preset.build(h, c).to_dict() if preset_name is not None else {"image_size": h, "channels": c}
    for key, option in MODEL_OPTIONS.items():
        if key in opts:
            value = opts.pop(key)
            model[key] = list(value) if option.ints else value
    if preset_name is not None:
        defaults = preset.defaults()
    else:
        defaults = {k: v for k, v in preset.defaults().items() if applies(k, name)}
        defaults.update(kind.defaults)
    cond = opts.get("cond", "auto")
    if cond == "class" and classes is None:
        raise OptionError(flag("cond"), f"class: {data} has no labels (no dataset.json beside its images; "
                          "dtools prep writes one for a source with a folder per class)")
    conditioned = classes is not None and cond != "none" and conditionable(kind)
    if conditioned:
        model["num_classes"] = len(classes)
    model = kind.network_config(model).to_dict()
    if "ema_decay" in opts:
        if "ema_length" in opts:
            raise DtoolsError(f"give {flag('ema_decay')} (a fixed decay) or {flag('ema_length')} (a "
                              "fraction of the run), not both")
        defaults["ema_length"] = None  # a decay given: the fixed-decay EMA
    if c == 1:  # grey data: digits, letters and glyphs have a handedness, and a mirrored 2 is no digit
        defaults["flip"] = False
    if "max_steps" not in opts and "epochs" not in opts and "max_minutes" not in opts:
        defaults["max_steps"] = preset.max_steps
    unknown = set(opts) - set(_FIELDS)
    assert not unknown, unknown
    betas = np.asarray(betas, dtype=np.float64)
    cfg = TrainConfig(
        data=str(data), out=str(out), beta=None if beta is None else str(beta),
        T=int(betas.shape[0]) if kind.schedule else None, image_size=h, channels=c, num_images=n,
        preset=preset_name, model=model, betas=betas, model_type=name, **{**defaults, **opts},
        classes=list(classes) if conditioned else None,
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
            continue
        was = _saved_value(cfg, key)
        if _given_value(cfg, key, value) != was:  # the same value again (a requeued command line) is fine
            raise DtoolsError(f"{flag(key)} cannot change when resuming a run (it is {_text(was)}, given "
                              f"{_text(value)}); drop it, or start a new run (another -o, or --force)")
    return cfg.validate()


def _saved_value(cfg: TrainConfig, key: str) -> Any:
    """What the resumed run holds for option `key`: a network option in its network config."""
    if key in MODEL_OPTIONS:
        value = cfg.model.get(key)
        return list(value) if MODEL_OPTIONS[key].ints and value is not None else value
    return getattr(cfg, key)


def _given_value(cfg: TrainConfig, key: str, value: Any) -> Any:
    """An option's value as the run would hold it: lists as lists, --preset auto as the preset it picks."""
    if key in MODEL_OPTIONS and MODEL_OPTIONS[key].ints:
        return list(value)
    if key == "preset" and cfg.preset is not None:
        return resolve_preset(value, cfg.image_size)
    return value


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "none"
    return str(value)
