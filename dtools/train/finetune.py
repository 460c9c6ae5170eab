"""Fine-tuning: a new run that starts from a trained model's weights (`dtools train DATA -o RUN
--init-from CKPT_OR_RUN`).

The network is the checkpoint's (its header's "model"; only --dropout may change, it holds no
weights); the model type, and for a DDPM the schedule and parameterization, default to the
checkpoint's; everything else is a new run's: new data, its own --lr, --batch-size, steps, seed, a fresh
optimizer, step 0. The data must have the image size and channels the network was built for. The
weights are the checkpoint's EMA weights by default (--init-weights raw: the online ones), and the new
run's EMA starts from them too. config.json and the checkpoints' "train" header record init_from and
init_weights.

A fine-tune has a recipe of its own (`recipe`), where an option does not say otherwise: a learning
rate FINETUNE_LR_FACTOR times the one that trained the source (its header's, or for a checkpoint
without one, such as an imported diffusers model, the from-scratch default of its model and size),
constant, without warm-up, so that the first steps do not undo what the model already does well;
and the source's own loss (its Min-SNR weight, floor and timestep distribution; plain MSE for an
imported model, as diffusers trains). The log's first line says what was chosen.

A checkpoint holds what sampling needs, so a DCGAN's starts its generator (the discriminator starts
afresh) and a VAE's its decoder (the encoder starts afresh).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from dtools.checkpoint import WEIGHTS, class_names, model_file, read_info, read_model
from dtools.errors import DtoolsError, mismatch_detail
from dtools.models import MODEL_TYPES
from dtools.train.config import MODEL_OPTIONS, TrainConfig, flag
from dtools.train.data import data_classes, peek
from dtools.train.method import Method
from dtools.train.presets import PRESETS, preset_for_size
from dtools.train.resolve import new_config, schedule_of

KEEPS = ("dropout",)  # network options a fine-tuning run may still set (they hold no weights)
# The fine-tune's learning rate as a share of the source's: measured by `bench/recipes.py finetune`
# (docs/quality.md, "Fine-tuning"): 600 steps on new emoji, FID on held-out images
FINETUNE_LR_FACTOR = 0.2  # lr 2e-4 for a cpu32 model: FID 149.6 as 1e-3 (149.3), best KID, 5e-5 worse
# a DDPM's, as in Ho et al.
LOSS_RECIPE = {"min_snr_gamma": None, "min_snr_floor": 0.0, "learned_weight": False, "t_dist": "uniform"}


def init_config(out: str, data: str, beta: str | None, options: dict[str, Any]) -> TrainConfig:
    """A new run's configuration on top of the checkpoint `options["init_from"]` names (a file or a run
    folder): its network, model type, schedule and parameterization, the data's facts, the options."""
    path = model_file(options["init_from"])
    info = read_info(path, fit=True)  # a crafted or misfitting checkpoint is refused before the run starts
    model_type = info["model_type"]
    if options.get("model_type") not in (None, model_type):
        raise DtoolsError(f"--model {options['model_type']}: {path} holds a {model_type} model, and "
                          "--init-from trains that; drop --model")
    for key in (*MODEL_OPTIONS, "preset"):
        if options.get(key) is not None and key not in KEEPS:
            raise DtoolsError(f"{flag(key)}: the network comes from {path} (--init-from); drop it")
    n, h, w, c = peek(data)
    kind = MODEL_TYPES[model_type]
    want_c, want_h, want_w = kind.network_config(info["model"]).image_shape()
    if (h, w, c) != (want_h, want_w, want_c):
        raise DtoolsError(f"{data}: images are {h}x{w}x{c}, but {path} makes {want_h}x{want_w}x{want_c}; "
                          f"prepare the data at that size (dtools prep SRC {data} --size {want_h})")
    source = info.get("train") if isinstance(info.get("train"), dict) else {}
    opts = {**options, "model_type": model_type, "init_from": str(path)}
    betas = np.zeros(0)
    if kind.schedule:
        betas = schedule_of(beta, info["betas"])  # by default the schedule it was trained with
        beta = beta if beta is not None else source.get("beta") or str(path)
        opts["parameterization"] = options.get("parameterization") or info["parameterization"]
        opts["preset"] = source.get("preset") if source.get("preset") in PRESETS else None
    chosen = recipe(source, model_type, h, opts.get("preset"))
    opts.update({k: v for k, v in chosen.items() if options.get(k) is None})
    cfg = new_config(data, out, beta, betas, (n, h, w, c), {**opts, "cond": None})  # classes: the source's
    if options.get("cond") is not None:
        cfg.cond = options["cond"]
    cfg.model = {**info["model"], **{k: options[k] for k in KEEPS if options.get(k) is not None}}
    cfg.classes = _classes(path, info, data, options.get("cond"))
    return cfg.validate()


def _classes(path: Path, info: dict[str, Any], data: str, cond: str | None) -> list[str] | None:
    """A fine-tuning run's classes: the checkpoint's (its network has their embedding), which the data's
    labels must name alike; an unconditional checkpoint trains unconditionally."""
    classes = class_names(info)
    if classes is None:
        if cond == "class":
            raise DtoolsError(f"--cond class: {path} is unconditional; --init-from keeps its network")
        return None
    if cond == "none":
        raise DtoolsError(f"--cond none: {path} is class-conditional; --init-from keeps its network")
    have = data_classes(data)
    if have != classes:
        shown = "no labels" if have is None else f"the classes {', '.join(have)}"
        raise DtoolsError(f"{data} has {shown}, but {path} is conditioned on {', '.join(classes)}; label "
                          "the data with its classes (dataset.json)")
    return list(classes)


def recipe(source: dict[str, Any], model_type: str, image_size: int, preset: str | None) -> dict[str, Any]:
    """The TrainConfig defaults of a fine-tuning run from a checkpoint whose "train" header is `source`
    ({} for one without, e.g. an imported model): see the module's docstring."""
    if isinstance(source.get("lr"), int | float) and source["lr"] > 0:
        base = float(source["lr"])
    else:  # the from-scratch lr, as resolve.new_config merges it: the preset's, under the model's own
        cadence = PRESETS[preset or preset_for_size(image_size)].defaults()
        scratch = {**cadence, **MODEL_TYPES[model_type].defaults}
        base = scratch["lr"]
    out: dict[str, Any] = {"lr": FINETUNE_LR_FACTOR * base, "warmup": 0.0, "lr_decay": "constant"}
    if MODEL_TYPES[model_type].schedule:
        dtools_trained = "min_snr_gamma" in source  # a dtools run's header holds it (None: plain MSE)
        out.update({k: source.get(k, v) if dtools_trained else v for k, v in LOSS_RECIPE.items()})
        out["min_snr_gamma"] = out["min_snr_gamma"] or 0.0  # 0: plain MSE (None would mean "the preset's")
    return out


def describe_recipe(cfg: TrainConfig) -> str:
    """The log line that says what a fine-tuning run trains with (before the line of `load_init`)."""
    shape = "constant" if cfg.lr_decay == "constant" and not cfg.warmup else \
        f"{cfg.lr_decay} after {cfg.warmup:g} warm-up"
    text = f"fine-tuning recipe: lr {cfg.lr:g} {shape}"
    if MODEL_TYPES[cfg.model_type].schedule:
        loss = f"Min-SNR-{cfg.min_snr_gamma:g}" if cfg.min_snr_gamma else "plain MSE"
        if cfg.min_snr_gamma and cfg.min_snr_floor:
            loss += f" (floor {cfg.min_snr_floor:g})"
        if cfg.learned_weight:
            loss += ", learned weight"
        text += f", {loss}, t {cfg.t_dist}"
    return text + "; options given override it (docs/train.md, \"Fine-tuning\")"


def load_init(method: Method, cfg: TrainConfig) -> str:
    """Put the --init-from weights into a freshly built method (and its EMA); returns the log line."""
    sets, info = read_model(cfg.init_from)
    if cfg.init_weights not in sets:
        others = ", ".join(w for w in WEIGHTS if w in sets)
        raise DtoolsError(f"{cfg.init_from}: holds no {cfg.init_weights} weights; use --init-weights "
                          f"{others}")
    weights = sets[cfg.init_weights]
    if not all(bool(torch.isfinite(v).all()) for v in weights.values() if v.is_floating_point()):
        raise DtoolsError(f"{cfg.init_from}: the {cfg.init_weights} weights contain NaN or inf")
    try:
        part = method.load_weights(weights)
    except RuntimeError as e:
        detail = mismatch_detail(e)
        raise DtoolsError(f"{cfg.init_from}: its weights do not fit the network ({detail})") from None
    return (f"starting from the {cfg.init_weights} weights of {cfg.init_from} (step {info.get('step', '?')})"
            + (f"; {part}" if part else ""))
