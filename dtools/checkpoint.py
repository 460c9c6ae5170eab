"""The model checkpoint, written and read in this one place: a safetensors file (dtools.tensorfile)
whose JSON header says everything needed to rebuild the network and use it.

Header (format "dtools.model"):

    {"format": "dtools.model", "format_version": 1, "dtools_version": "0.1.0",
     "model_type": "unet", "model": {...the network's config...}, "weights": ["ema", "raw"],
     "parameterization": "eps", "betas": [...float64 as JSON...],        (diffusion models)
     "step": 2000, "image_size": 32, "channels": 3, "ema_decay": 0.999, "train": {...}, ...}

A conditioned model's header says what it is conditioned on in "condition": {"kind": ..., ...} (absent
or null: an unconditional model); CONDITION_KINDS lists the kinds this dtools can use, and a header with
another is refused in one line. A class-conditional U-Net's is {"kind": "class", "classes": [names]},
one name per class of its network config's `num_classes`.

Tensors: the first set of weights named in "weights" (the EMA, what sampling uses by default) under
the network's plain `state_dict` keys, every other set under its name as a prefix ("raw.conv_in.weight").

`model_type` picks the spec in dtools.models.MODEL_TYPES whose config class rebuilds the network from
"model": "unet" (a denoiser; checkpoints of dtools 0.1.0 have no model_type and hold one), "dcgan" (a
GAN's generator) or "vae" (a VAE's decoder), the last two with no schedule. `dtools sample` dispatches
on it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from dtools.diffusion import PARAMETERIZATIONS, Schedule
from dtools.errors import DtoolsError, brief, mismatch_detail
from dtools.models import DEFAULT_MODEL, MODEL_TYPES
from dtools.schedules import validate_betas
from dtools.tensorfile import load_tensors, read_header, save_tensors, tensor_shapes

MODEL_FORMAT = "dtools.model"
RUN_MODEL_FILE = "model.safetensors"  # the checkpoint in a `dtools train` run folder
RUN_GUIDE_FILE = "guide.safetensors"  # its early snapshot, a weaker model to guide with (--guide-at)
WEIGHTS = ("ema", "raw")  # the sets of weights `dtools train` writes, the sampling default first


LEGACY_MODEL_TYPE = DEFAULT_MODEL  # what a header without "model_type" (dtools 0.1.0) holds
CONDITION_KINDS: tuple[str, ...] = ("class",)  # what a model may be conditioned on ("condition")
MAX_TIMESTEPS = 100_000  # a header's schedule longer than this is a crafted one, not a model's

# The JSON type of every header field that dtools reads back (absent or null: not recorded); float
# accepts integers too, never booleans. A header that is valid JSON but not what dtools writes (a list
# for "model_type", a string for "step") is refused in one line before anything is built.
HEADER_FIELDS: dict[str, type] = {
    "model_type": str, "model": dict, "parameterization": str, "betas": list, "weights": list, "step": int,
    "images_seen": int, "elapsed": float, "ema_decay": float, "ema_length": float, "ema_posthoc": dict,
    "image_size": int,
    "channels": int, "train": dict, "source": dict, "dtools_version": str, "packed": dict}
# and of the fields of its "train" (the run's resolved config) that `info` and `--init-from` read
TRAIN_FIELDS: dict[str, type] = {
    "lr": float, "batch_size": int, "beta": str, "preset": str, "d_steps": str, "data": str,
    "num_images": int, "data_fingerprint": str, "min_snr_gamma": float, "min_snr_floor": float,
    "t_dist": str, "cond_drop": float, "ema_warmup": bool, "init_from": str, "init_weights": str,
    "model_type": str, "learned_weight": bool}


class LoadedModel(NamedTuple):
    """A checkpoint's network, ready to run (eval mode), and what using it needs."""

    network: nn.Module
    schedule: Schedule | None  # float64, on the CPU; None for a model that is not a denoiser
    parameterization: str | None
    info: dict[str, Any]  # the whole header

    @property
    def condition(self) -> dict[str, Any] | None:
        """What the network is conditioned on (the header's "condition"); None: unconditional."""
        return self.info.get("condition")

    @property
    def classes(self) -> tuple[str, ...] | None:
        """The class names of a class-conditional model (index -> name); None: unconditional."""
        return class_names(self.info)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images the network makes."""
        return MODEL_TYPES[self.info["model_type"]].network_config(self.info["model"]).image_shape()


def save_model(
    path: str | os.PathLike,
    weights: dict[str, dict[str, torch.Tensor]],
    *,
    config: dict[str, Any],
    model_type: str = "unet",
    meta: dict[str, Any] | None = None,
    force: bool = False,
) -> None:
    """Write a model checkpoint atomically.

    `weights` maps a name to a state dict, the sampling default first ({"ema": ..., "raw": ...});
    `config` rebuilds the network through dtools.models.MODEL_TYPES[model_type]; `meta` adds header fields
    (for a denoiser at least "parameterization" and "betas").
    """
    assert model_type in MODEL_TYPES, model_type
    names = list(weights)
    tensors = dict(weights[names[0]])
    for name in names[1:]:
        tensors.update({f"{name}.{k}": v for k, v in weights[name].items()})
    header = {"format": MODEL_FORMAT, **(meta or {}), "model_type": model_type, "model": config,
              "weights": names}
    save_tensors(path, tensors, header, force)


def model_file(path: str | os.PathLike) -> Path:
    """`path` itself, or for the run folder of `dtools train` the checkpoint in it (RUN/model.safetensors)."""
    p = Path(path)
    if p.is_dir():
        if (p / RUN_MODEL_FILE).is_file():
            return p / RUN_MODEL_FILE
        raise DtoolsError(f"{p}: a folder without {RUN_MODEL_FILE}; give a checkpoint file, or a run folder "
                          "of `dtools train` once it has saved its first checkpoint")
    return p


def guide_file(path: str | os.PathLike) -> Path:
    """`path` itself, or for a run folder its early snapshot RUN/guide.safetensors (`sample --guide RUN`)."""
    p = Path(path)
    if p.is_dir():
        if (p / RUN_GUIDE_FILE).is_file():
            return p / RUN_GUIDE_FILE
        raise DtoolsError(f"{p}: a folder without {RUN_GUIDE_FILE} (the early snapshot `dtools train` keeps "
                          "with --guide-at); give a guide checkpoint file")
    return p


def read_info(path: str | os.PathLike, fit: bool = False) -> dict[str, Any]:
    """A checkpoint's header alone (cheap), checked field by field (`_checked`; the model type set for
    dtools 0.1.0's); with `fit`, also every set of weights the header lists against the network its config
    builds, on the meta device (no tensor data is read). `path` may be a run folder (model_file)."""
    path = model_file(path)
    info = _checked(path, read_header(path, MODEL_FORMAT))
    if fit:
        expected = _state_shapes(info)
        for name, shapes in _split(info.get("weights") or list(WEIGHTS), tensor_shapes(path)).items():
            _check_fit(path, name, shapes, expected)
    return info


def check_fields(path: str | os.PathLike, fields: dict[str, Any], types: dict[str, type], where: str) -> None:
    """Each of `types` that `fields` holds (not null) has that JSON type; else a one-line DtoolsError."""
    for key, want in types.items():
        v = fields.get(key)
        if v is None:
            continue
        ok = (isinstance(v, int | float) if want is float else isinstance(v, want)) and (
            want is bool or not isinstance(v, bool))
        if not ok or (want is float and not math.isfinite(v)):
            name = {float: "number", int: "integer", str: "string", dict: "JSON object", list: "list",
                    bool: "boolean"}[want]
            raise DtoolsError(f"{path}: damaged header ({where}{key!r} is {brief(v)}, not a {name})")


def header_betas(path: str | os.PathLike, betas: Any) -> np.ndarray:
    """A header's "betas" as a checked float64 schedule: a list of 2 .. MAX_TIMESTEPS numbers, each β in
    (0, 1) (the last may be 1), ᾱ falling strictly (dtools.schedules.validate_betas)."""
    if not isinstance(betas, list) or not all(isinstance(b, int | float) and not isinstance(b, bool)
                                              for b in betas):
        raise DtoolsError(f"{path}: 'betas' in the header is not a list of numbers")
    if len(betas) > MAX_TIMESTEPS:
        raise DtoolsError(f"{path}: bad schedule in the header ({len(betas)} steps; at most {MAX_TIMESTEPS})")
    try:
        return validate_betas(np.asarray(betas, dtype=np.float64), "betas")
    except DtoolsError as e:
        raise DtoolsError(f"{path}: bad schedule in the header ({e})") from None


def _checked(path: str | os.PathLike, info: dict[str, Any]) -> dict[str, Any]:
    """A model header checked field by field before anything is built from it (see HEADER_FIELDS): its
    model type, its network config against the config class's bounds, its schedule and condition."""
    info.setdefault("model_type", LEGACY_MODEL_TYPE)
    check_fields(path, info, HEADER_FIELDS, "")
    check_fields(path, info.get("train") or {}, TRAIN_FIELDS, "train.")
    kind = MODEL_TYPES.get(info["model_type"])
    if kind is None:
        raise DtoolsError(f"{path}: holds a {brief(info['model_type'])} model, which this dtools cannot use "
                          f"(it knows {', '.join(MODEL_TYPES)})")
    for key in ("model", "parameterization", "betas") if kind.schedule else ("model",):
        if info.get(key) is None:
            raise DtoolsError(f"{path}: checkpoint header lacks {key!r}")
    try:
        kind.network_config(info["model"])
    except DtoolsError as e:
        raise DtoolsError(f"{path}: {e}") from None
    if kind.schedule:
        if info["parameterization"] not in PARAMETERIZATIONS:
            raise DtoolsError(f"{path}: unknown parameterization {brief(info['parameterization'])}")
        header_betas(path, info["betas"])
    names = info.get("weights")
    if names is not None and (not names or len(names) > 8 or not all(isinstance(n, str) for n in names)
                              or len(set(names)) != len(names)):
        raise DtoolsError(f"{path}: damaged header ('weights' is {brief(names)}, not a few distinct names)")
    condition = info.get("condition")
    if condition is not None:
        what = condition.get("kind") if isinstance(condition, dict) else None
        if what not in CONDITION_KINDS:
            raise DtoolsError(f"{path}: its model is conditioned on {brief(what or condition)}, which this "
                              "dtools cannot use")
        classes = condition.get("classes")
        n = info["model"].get("num_classes") if isinstance(info["model"], dict) else None
        if (not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes)
                or len(set(classes)) != len(classes) or n != len(classes)):
            want = f"the {n} distinct class names of its network" if n else "an unconditional network's"
            raise DtoolsError(f"{path}: its class condition names {brief(classes)}, not {want}")
    elif isinstance(info["model"], dict) and info["model"].get("num_classes"):
        raise DtoolsError(f"{path}: its network is class-conditional but the header names no classes")
    return info


def class_names(info: dict[str, Any]) -> tuple[str, ...] | None:
    """The class names of a checked header (`read_info`); None for an unconditional model."""
    condition = info.get("condition")
    return tuple(condition["classes"]) if condition else None


def read_model(path: str | os.PathLike) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """A checkpoint's sets of weights by name ({"ema": state dict, "raw": ...}) and its checked header;
    `path` may be a run folder (model_file)."""
    path = model_file(path)
    info = read_info(path, fit=True)  # nothing is loaded before the shapes are known to fit
    tensors, _ = load_tensors(path, MODEL_FORMAT)
    sets = _split(info.get("weights") or list(WEIGHTS), tensors)
    return {name: sd for name, sd in sets.items() if sd}, info


def _split(names: list[str], tensors: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A file's tensors (or their shapes) by set: plain keys are the first set's, "NAME.key" set NAME's."""
    sets: dict[str, dict[str, Any]] = {name: {} for name in names}
    for key, value in tensors.items():
        prefix = next((n for n in names[1:] if key.startswith(f"{n}.")), None)
        if prefix is None:
            sets[names[0]][key] = value
        else:
            sets[prefix][key[len(prefix) + 1:]] = value
    return sets


def _state_shapes(info: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The state-dict shapes of the network a checked header describes, built on the meta device (no
    memory, no time for the weights): a crafted config is compared with the file before a real build."""
    config = MODEL_TYPES[info["model_type"]].network_config(info["model"])
    with torch.device("meta"):
        network = config.build()
    return {k: tuple(v.shape) for k, v in network.state_dict().items()}


def _check_fit(path: Path, name: str, shapes: dict[str, tuple[int, ...]],
               expected: dict[str, tuple[int, ...]]) -> None:
    """A set of weights (its tensor shapes) fits the network of the header; else a one-line DtoolsError."""
    if not shapes:
        return
    missing = sorted(set(expected) - set(shapes))
    extra = sorted(set(shapes) - set(expected))
    odd = next((k for k in expected if k in shapes and tuple(shapes[k]) != expected[k]), None)
    more = lambda keys: f" and {len(keys) - 1} more" if len(keys) > 1 else ""  # noqa: E731
    if missing:
        detail = f"missing {brief(missing[0])}{more(missing)}"
    elif extra:
        detail = f"unexpected {brief(extra[0])}{more(extra)}"
    elif odd is not None:
        detail = f"{odd} has shape {list(shapes[odd])}, the config makes {list(expected[odd])}"
    else:
        return
    raise DtoolsError(f"{path}: the {name} weights do not fit its model config ({detail})")


def load_model(
    path: str | os.PathLike, weights: str = "ema", device: torch.device | str = "cpu"
) -> LoadedModel:
    """The network of a checkpoint with the chosen weights, checked, on `device`, in eval mode; and,
    for a denoiser, its schedule and parameterization. Every problem is a one-line DtoolsError."""
    if weights not in WEIGHTS:
        raise DtoolsError(f"unknown --weights {weights!r}; choose ema or raw")
    path = model_file(path)
    sets, info = read_model(path)
    if weights not in sets:
        hint = "non-EMA" if weights == "raw" else "EMA"
        other = next(iter(sets), "ema")
        raise DtoolsError(f"{path}: holds no {weights} ({hint}) weights; use --weights {other}")
    kind = MODEL_TYPES[info["model_type"]]
    network = kind.network_config(info["model"]).build()
    try:
        network.load_state_dict(sets[weights], strict=True)
    except RuntimeError as e:
        detail = mismatch_detail(e)
        raise DtoolsError(f"{path}: the {weights} weights do not fit its model config ({detail})") from None
    if not all(torch.isfinite(p).all() for p in network.parameters()):
        raise DtoolsError(f"{path}: the {weights} weights contain NaN or inf (a diverged run?)")
    network = network.to(device).eval()
    if not kind.schedule:
        return LoadedModel(network, None, None, info)
    return LoadedModel(network, _schedule(path, info), info["parameterization"], info)


def _schedule(path: str | os.PathLike, info: dict[str, Any]) -> Schedule:
    return Schedule.from_betas(header_betas(path, info["betas"]))  # checked by _checked already

