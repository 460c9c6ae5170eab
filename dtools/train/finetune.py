"""Fine-tuning: a new run that starts from a trained model's weights (`dtools train DATA -o RUN
--init-from CKPT_OR_RUN`).

The network is the checkpoint's (its header's "model"; only --dropout may change, it holds no
weights); the model type, and for a DDPM the schedule and parameterization, default to the
checkpoint's; everything else is a new run's: new data, its own --lr, --batch-size, steps, seed, a fresh
optimizer, step 0. The data must have the image size and channels the network was built for. The
weights are the checkpoint's EMA weights by default (--init-weights raw: the online ones), and the new
run's EMA starts from them too. config.json and the checkpoints' "train" header record init_from and
init_weights.

A checkpoint holds what sampling needs, so a DCGAN's starts its generator (the discriminator starts
afresh) and a VAE's its decoder (the encoder starts afresh).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dtools.checkpoint import WEIGHTS, model_file, read_info, read_model
from dtools.errors import DtoolsError, mismatch_detail
from dtools.models import MODEL_TYPES
from dtools.train.config import MODEL_OPTIONS, TrainConfig, flag
from dtools.train.data import peek
from dtools.train.method import Method
from dtools.train.presets import PRESETS
from dtools.train.resolve import new_config, schedule_of

KEEPS = ("dropout",)  # network options a fine-tuning run may still set (they hold no weights)


def init_config(out: str, data: str, beta: str | None, options: dict[str, Any]) -> TrainConfig:
    """A new run's configuration on top of the checkpoint `options["init_from"]` names (a file or a run
    folder): its network, model type, schedule and parameterization, the data's facts, the options."""
    path = model_file(options["init_from"])
    info = read_info(path)
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
    cfg = new_config(data, out, beta, betas, (n, h, w, c), opts)
    cfg.model = {**info["model"], **{k: options[k] for k in KEEPS if options.get(k) is not None}}
    return cfg.validate()


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
