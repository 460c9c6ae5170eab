"""diffusers pipeline folders, written from a dtools checkpoint and read back into one: the work of
`dtools export --format diffusers` and `dtools import`. The mapping itself is `dtools.diffusers_format`.

Export writes the folder beside its target and renames it into place (`fileio.atomic_folder`). The
weights file's safetensors metadata holds, besides diffusers' {"format": "pt"}, the checkpoint's dtools
header under "dtools" (as every dtools tensor file does); diffusers ignores it. Import rebuilds the
header from config.json and the scheduler, and takes the embedded one instead only when it describes
the same network, betas and parameterization, so that export -> import gives back the checkpoint
(only `weights` and the new `source` field differ), while an edited or foreign folder is read as it is.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from dtools import __version__
from dtools.checkpoint import load_model, save_model
from dtools.diffusers_format import (
    PIPELINE_CLASS,
    SCHEDULER_CLASS,
    UNET_CLASS,
    VARIANCE_TYPE,
    from_diffusers_state,
    from_unet2d_config,
    read_scheduler,
    scheduler_config,
    to_diffusers_state,
    to_unet2d_config,
)
from dtools.errors import DtoolsError, OptionError, first_line, mismatch_detail
from dtools.fileio import atomic_folder, check_folder_writable, check_writable
from dtools.models import DEFAULT_MODEL, MODEL_TYPES
from dtools.tensorfile import HEADER_KEY, check_layout
from dtools.unet import UNet, UNetConfig, count_parameters

UNET_CONFIG = "unet/config.json"
UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"
SCHEDULER_CONFIG = "scheduler/scheduler_config.json"
MODEL_INDEX = "model_index.json"
FILES = (MODEL_INDEX, UNET_CONFIG, UNET_WEIGHTS, SCHEDULER_CONFIG)
EXPORT_FORMAT = "dtools.diffusers-export"  # the "format" of the header embedded in the weights' metadata
NOT_COPIED = ("format", "format_version", "dtools_version", "weights")  # save_model writes these anew


@dataclass(frozen=True)
class Exported:
    folder: Path
    parameters: int
    weights: str
    unet_config: dict[str, Any]
    scheduler_config: dict[str, Any]


@dataclass(frozen=True)
class Imported:
    checkpoint: Path
    parameters: int
    header: dict[str, Any]
    variance: str  # the scheduler's fixed variance, as `dtools sample --variance` names it
    embedded: bool  # the header came from a dtools export


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _ours(rel: Path) -> bool:
    return rel.as_posix() in FILES


def export_folder(
    checkpoint: str | os.PathLike, out: str | os.PathLike, *, weights: str = "ema",
    variance: str = "posterior", force: bool = False,
) -> Exported:
    """Write a dtools U-Net checkpoint as a DDPMPipeline folder (UNet2DModel + DDPMScheduler)."""
    if variance not in VARIANCE_TYPE:
        raise OptionError("--variance", f"{variance!r}; choose {' or '.join(VARIANCE_TYPE)}")
    folder = check_folder_writable(out, force, _ours, "dtools export")  # before any work
    loaded = load_model(checkpoint, weights)  # checks the header, the weights' fit, NaNs
    info = loaded.info
    if not MODEL_TYPES[info["model_type"]].exports:
        raise DtoolsError(f"{checkpoint}: holds a {info['model_type']!r} model; only U-Nets map to diffusers")
    try:
        unet_config = to_unet2d_config(UNetConfig.from_dict(info["model"]))
    except DtoolsError as e:
        raise DtoolsError(f"{checkpoint}: diffusers cannot express this model exactly: {e}") from None
    sched = scheduler_config(loaded.schedule.betas.numpy(), loaded.parameterization, variance)
    embedded = {"format": EXPORT_FORMAT, "format_version": 1, "dtools_version": __version__,
                "weights": weights, "header": {k: v for k, v in info.items() if k not in NOT_COPIED}}
    state = to_diffusers_state(loaded.network.state_dict())
    blob = safetensors_bytes(state, metadata={"format": "pt", HEADER_KEY: json.dumps(embedded)})
    index = {"_class_name": PIPELINE_CLASS, "_diffusers_version": unet_config["_diffusers_version"],
             "scheduler": ["diffusers", SCHEDULER_CLASS], "unet": ["diffusers", UNET_CLASS]}
    with atomic_folder(folder, force, _ours, "dtools export") as tmp:
        _write(tmp / MODEL_INDEX, _json_bytes(index))
        _write(tmp / UNET_CONFIG, _json_bytes(unet_config))
        _write(tmp / UNET_WEIGHTS, blob)
        _write(tmp / SCHEDULER_CONFIG, _json_bytes(sched))
    return Exported(folder, count_parameters(loaded.network), weights, unet_config, sched)


EXPORT_FORMATS = {"diffusers": export_folder}


def export(
    checkpoint: str | os.PathLike, out: str | os.PathLike, fmt: str = "diffusers", **options: Any
) -> Exported:
    """`dtools export`: the checkpoint in the format `fmt` (EXPORT_FORMATS)."""
    if fmt not in EXPORT_FORMATS:
        raise OptionError("--format", f"{fmt!r}; choose {', '.join(EXPORT_FORMATS)}")
    return EXPORT_FORMATS[fmt](checkpoint, out, **options)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DtoolsError(f"{path}: no such file")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise DtoolsError(f"{path}: not valid JSON ({first_line(e)})") from None
    if not isinstance(obj, dict):
        raise DtoolsError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _read_weights(unet: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The UNet's safetensors weights and metadata; pickled `.bin` weights are refused."""
    path = unet / Path(UNET_WEIGHTS).name
    if not path.is_file():
        if (unet / f"{path.name}.index.json").exists():
            raise DtoolsError(f"{unet}: sharded weights ({path.name}.index.json); dtools reads one "
                              "safetensors file")
        pickled = sorted(p.name for p in unet.glob("*.bin")) + sorted(p.name for p in unet.glob("*.pt*"))
        if pickled:
            raise DtoolsError(f"{unet}: holds pickled weights only ({pickled[0]}); dtools reads safetensors, "
                              "never pickle (save_pretrained(..., safe_serialization=True) converts them)")
        raise DtoolsError(f"{path}: no such file")
    check_layout(path)  # a crafted header is refused before safetensors maps any of it
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise DtoolsError(f"{path}: not a readable safetensors file ({first_line(e)})") from None


def _embedded(metadata: dict[str, str], header: dict[str, Any], cfg: UNetConfig) -> tuple[dict, str] | None:
    """The dtools header that a dtools export left in the weights' metadata, and the name of the weights it
    exported, when that header describes the same network, betas and parameterization as the folder's
    config files; else None (a foreign or an edited folder)."""
    try:
        meta = json.loads(metadata.get(HEADER_KEY, "null"))
        old = meta["header"] if isinstance(meta, dict) and meta.get("format") == EXPORT_FORMAT else None
        if not isinstance(old, dict) or old.get("model_type", DEFAULT_MODEL) != DEFAULT_MODEL:
            return None
        same = (to_unet2d_config(UNetConfig.from_dict(old["model"])) == to_unet2d_config(cfg)
                and old["parameterization"] == header["parameterization"] and old["betas"] == header["betas"])
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError, DtoolsError):
        return None
    return (old, str(meta.get("weights"))) if same else None


def _parse(path: Path, parse):
    """`parse` of a JSON file; its one-line error gets the file's name in front."""
    obj = _read_json(path)
    try:
        return parse(obj)
    except DtoolsError as e:
        raise DtoolsError(f"{path}: {e}") from None


def _load_weights(root: Path, cfg: UNetConfig) -> tuple[dict[str, torch.Tensor], dict[str, str], int]:
    """The folder's UNet weights under dtools' keys, checked against `cfg`; their metadata; the parameter
    count."""
    path = root / UNET_WEIGHTS
    tensors, metadata = _read_weights(path.parent)
    try:
        state = from_diffusers_state(tensors)
        network = UNet(cfg)
        network.load_state_dict(state, strict=True)
    except DtoolsError as e:
        raise DtoolsError(f"{path}: {e}") from None
    except RuntimeError as e:
        raise DtoolsError(f"{path}: the weights do not fit {UNET_CONFIG} ({mismatch_detail(e)})") from None
    if not all(torch.isfinite(t).all() for t in state.values()):
        raise DtoolsError(f"{path}: the weights contain NaN or inf")
    return state, metadata, count_parameters(network)


def _check_layout(root: Path) -> None:
    if not root.exists():
        raise DtoolsError(f"{root}: no such folder")
    if not root.is_dir():
        raise DtoolsError(f"{root}: not a folder; dtools import reads a diffusers pipeline folder "
                          f"({MODEL_INDEX}, unet/, scheduler/)")
    if not (root / "unet").is_dir() or not (root / "scheduler").is_dir():
        hint = " (this looks like a bare unet/ folder)" if (root / "config.json").exists() else ""
        raise DtoolsError(f"{root}: expected a diffusers pipeline folder with unet/ and scheduler/{hint}; "
                          "dtools needs the scheduler's betas too")
    if (root / MODEL_INDEX).exists():
        unet = _read_json(root / MODEL_INDEX).get("unet")
        if isinstance(unet, list) and unet and unet[-1] != UNET_CLASS:
            raise DtoolsError(f"{root / MODEL_INDEX}: its unet is a {unet[-1]!r}; dtools imports "
                              f"{UNET_CLASS} only")


def import_folder(folder: str | os.PathLike, out: str | os.PathLike, *, force: bool = False) -> Imported:
    """Read a diffusers UNet2DModel pipeline folder into a dtools model checkpoint (as its EMA weights)."""
    root = Path(folder)
    _check_layout(root)
    check_writable(out, force)  # before the weights are read
    cfg = _parse(root / UNET_CONFIG, from_unet2d_config)
    betas, parameterization, variance = _parse(root / SCHEDULER_CONFIG, read_scheduler)
    state, metadata, parameters = _load_weights(root, cfg)
    header = {"parameterization": parameterization, "betas": [float(b) for b in betas],
              "image_size": cfg.image_size, "channels": cfg.in_channels, "model": cfg.to_dict()}
    source = {"format": "diffusers", "path": str(root), "class": UNET_CLASS}
    found = _embedded(metadata, header, cfg)
    if found is not None:
        header, source["weights"] = found
    if cfg.num_classes and not header.get("condition"):  # the names went missing: call classes by index
        header["condition"] = {"kind": "class", "classes": [str(i) for i in range(cfg.num_classes)]}
    meta = {k: v for k, v in header.items() if k not in ("model_type", "model", "source")}
    meta["source"] = source
    save_model(out, {"ema": state}, config=header["model"], model_type=DEFAULT_MODEL, meta=meta, force=force)
    return Imported(Path(out), parameters, {**meta, "model": header["model"]}, variance, found is not None)
