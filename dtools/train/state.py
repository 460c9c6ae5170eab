"""The training state for `--resume`: everything needed to continue a run bit for bit, without pickle.

One safetensors file (RUN/train-state.safetensors) holds, as tensors:

    raw.<key>                 the online weights (state_dict keys)
    ema.<key>                 the EMA weights
    adam.<name>.<field>       Adam's moments and step count per parameter name (exp_avg, exp_avg_sq, step)
    rng.torch                 torch's CPU generator state (uint8)
    rng.cuda.<i>              each CUDA device's generator state (uint8), when CUDA is in use
    data.perm, data.generator the current epoch's permutation and the shuffling generator (uint8)

and in the JSON header (key "dtools", format "dtools.train-state"): step, the EMA update count, the
data stream position, the GradScaler state, the elapsed training time, the resolved training and
model config, and for a diffusion model the parameterization and the exact betas.

That is a DDPM run's state, as dtools 0.1.0 wrote it. A training method with more networks or
optimizers names them with more prefixes (a DCGAN: `disc.<key>` for the discriminator and
`adam_disc.<name>.<field>` for its Adam), and its header says its "model_type" (absent: "unet").
`capture` and `restore` take the modules and optimizers by prefix.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from dtools.checkpoint import check_fields, header_betas
from dtools.ema import EMA
from dtools.errors import DtoolsError, brief, first_line
from dtools.models import DEFAULT_MODEL, MODEL_TYPES
from dtools.tensorfile import load_tensors, read_header, save_tensors
from dtools.train.data import BatchStream

STATE_FORMAT = "dtools.train-state"
ADAM_FIELDS = ("exp_avg", "exp_avg_sq", "step")
# The JSON types of the header fields a resume reads besides those checked below (absent or null: not
# recorded); a list for "model_type" once ended in a traceback
STATE_FIELDS: dict[str, type] = {"model_type": str, "parameterization": str, "elapsed": float, "scaler": dict,
                                 "dtools_version": str}


Modules = dict[str, nn.Module]  # tensor-name prefix -> module ({"raw": model, "ema": ema.module})
Optimizers = dict[str, tuple[torch.optim.Optimizer, nn.Module]]  # prefix -> (Adam, the module it updates)


def capture(
    modules: Modules, optimizers: Optimizers, stream: BatchStream, scaler: torch.amp.GradScaler | None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Snapshot of the run as (tensors, header fields); tensors are copies, safe to write later."""
    tensors: dict[str, torch.Tensor] = {}
    for prefix, module in modules.items():
        for k, v in module.state_dict().items():
            tensors[f"{prefix}.{k}"] = v.detach().clone()
    for prefix, (optimizer, model) in optimizers.items():
        names = [n for n, _ in model.named_parameters()]
        opt_state = optimizer.state_dict()["state"]
        for i, name in enumerate(names):
            for field in ADAM_FIELDS:
                if i in opt_state and field in opt_state[i]:
                    val = opt_state[i][field]
                    val = val if isinstance(val, torch.Tensor) else torch.tensor(float(val))
                    tensors[f"{prefix}.{name}.{field}"] = val.detach().clone()
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    data_tensors, data_info = stream.state()
    for k, v in data_tensors.items():
        tensors[f"data.{k}"] = v
    info = {
        "data": data_info,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
    }
    return tensors, info


def save_state(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    save_tensors(path, tensors, {"format": STATE_FORMAT, **meta}, force=True)


def read_state_header(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON header of a training state (cheap), checked for the fields a resume needs."""
    info = read_header(path, STATE_FORMAT)
    info.setdefault("model_type", DEFAULT_MODEL)  # dtools 0.1.0 and every DDPM run: a U-Net with a schedule
    check_fields(path, info, STATE_FIELDS, "")
    kind = MODEL_TYPES.get(info["model_type"])
    if kind is None:
        raise DtoolsError(f"{path}: the training state of a {brief(info['model_type'])} model, which this "
                          f"dtools cannot train (it knows {', '.join(MODEL_TYPES)})")
    diffusion = kind.schedule
    keys = ("step", "train", "model", "parameterization", "betas", "data", "ema_updates")
    for key in keys if diffusion else (k for k in keys if k not in ("parameterization", "betas")):
        if key not in info:
            raise DtoolsError(f"{path}: training state lacks {key!r}; it cannot be resumed")
    kinds = {"step": int, "train": dict, "model": dict, "betas": list, "data": dict, "ema_updates": int}
    for key, want in kinds.items():
        if key in info and (not isinstance(info[key], want) or isinstance(info[key], bool)):
            raise DtoolsError(f"{path}: damaged training state ({key!r} is not a {want.__name__})")
    if diffusion and not all(isinstance(b, int | float) and not isinstance(b, bool) for b in info["betas"]):
        raise DtoolsError(f"{path}: damaged training state (betas are not all numbers)")
    if diffusion:
        header_betas(path, info["betas"])
    try:  # the network it would rebuild, against the config class's bounds, before anything is built
        kind.network_config(info["model"])
    except DtoolsError as e:
        raise DtoolsError(f"{path}: damaged training state ({e})") from None
    return info


def load_state(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    read_state_header(path)
    return load_tensors(path, STATE_FORMAT)


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def restore(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], info: dict[str, Any], modules: Modules,
    optimizers: Optimizers, scaler: torch.amp.GradScaler | None, emas: tuple[EMA, ...] = (),
) -> BatchStream:
    """Put a loaded state back into freshly built objects (`modules` and `optimizers` by prefix, as
    `capture` took them; each of `emas` gets the update count); returns the data stream at its position.

    Any mismatch (missing or misshapen tensors) is a one-line DtoolsError naming the file.
    """
    try:
        device = next(next(iter(modules.values())).parameters()).device
        for prefix, module in modules.items():
            module.load_state_dict(_prefixed(tensors, f"{prefix}."), strict=True)
        for ema in emas:
            ema.num_updates = int(info["ema_updates"])
        for prefix, (optimizer, model) in optimizers.items():
            _restore_adam(tensors, prefix, optimizer, model, device)
        if info.get("scaler") and scaler is not None and scaler.is_enabled():
            scaler.load_state_dict(info["scaler"])
        stream = BatchStream.restore(_prefixed(tensors, "data."), info["data"])
        if stream.perm.shape != (stream.n,) or not 0 <= stream.pos <= stream.n:
            raise ValueError("data position out of range")
        torch.set_rng_state(tensors["rng.torch"])
        cuda = _prefixed(tensors, "rng.cuda.")
        if cuda and device.type == "cuda" and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([cuda[str(i)] for i in range(len(cuda))])
    except KeyError as e:
        raise DtoolsError(f"{path}: damaged training state (missing {e.args[0]!s})") from None
    except (RuntimeError, ValueError, TypeError) as e:
        raise DtoolsError(f"{path}: training state does not fit this model ({first_line(e)})") from None
    return stream


def _restore_adam(
    tensors: dict[str, torch.Tensor], prefix: str, optimizer: torch.optim.Optimizer, model: nn.Module,
    device: torch.device,
) -> None:
    """Adam's per-parameter state from `prefix.<name>.<field>` tensors (a KeyError names a missing one)."""
    names = [n for n, _ in model.named_parameters()]
    state = {}
    for i, name in enumerate(names):
        keys = {f: f"{prefix}.{name}.{f}" for f in ADAM_FIELDS}
        fields = {f: tensors[k] for f, k in keys.items() if k in tensors}
        if fields:
            if set(fields) != set(ADAM_FIELDS):
                raise KeyError(f"{prefix}.{name}")
            state[i] = {f: (v if f == "step" else v.to(device)) for f, v in fields.items()}
    sd = optimizer.state_dict()
    sd["state"] = state
    optimizer.load_state_dict(sd)
