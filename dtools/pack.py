"""A model made small enough to share: the job behind `dtools pack`.

A run folder of `dtools train` holds what training needs (the EMA and the raw weights, in float32,
beside a training state); sampling needs one set of weights. `pack` keeps one set (the EMA by default)
of the model and of its guide (RUN/guide.safetensors, the early snapshot that autoguides it), stores
them in half precision, and writes them as a run-like folder, OUT/model.safetensors and
OUT/guide.safetensors, that `dtools sample OUT` samples exactly as it samples the run. Four times
smaller: a 1.1 M-parameter model and its guide take 4.5 MB instead of 18.

Each packed checkpoint keeps its source's header (network, schedule, training config, step, data
fingerprint) and adds "packed": where it came from (path and SHA-256 of the source file), which
weights, the storage dtype and the largest relative rounding error of any weight, so that
`dtools info` tells a shipped model's provenance.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from dtools.checkpoint import RUN_GUIDE_FILE, RUN_MODEL_FILE, model_file, read_model, save_model
from dtools.errors import DtoolsError
from dtools.fileio import file_digest

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
DEFAULT_DTYPE = "float16"  # 10 mantissa bits: rounding moves a weight by at most 2^-11 of itself
NOT_COPIED = ("format", "format_version", "dtools_version", "weights", "model_type", "model")


@dataclass(frozen=True)
class Packed:
    path: Path
    source: Path
    parameters: int
    nbytes: int  # the file's size
    source_nbytes: int
    max_rel_error: float


def cast(state: dict[str, torch.Tensor], dtype: torch.dtype,
         where: Path) -> tuple[dict[str, torch.Tensor], float]:
    """The state dict in `dtype` and the largest relative change of a weight (over weights with
    |w| >= 1e-4: smaller ones may go subnormal, which changes nothing a network computes).
    A weight that overflows the dtype is refused, naming the tensor."""
    out, worst = {}, 0.0
    for name, w in state.items():
        if not w.is_floating_point():
            out[name] = w
            continue
        c = w.to(dtype)
        if not torch.isfinite(c).all():
            raise DtoolsError(f"{where}: weight {name} overflows {dtype_name(dtype)} (|w| up to "
                              f"{w.abs().max().item():.3g}); pack with --dtype bfloat16 or float32")
        w64, c64 = w.double(), c.double()
        big = w64.abs() >= 1e-4
        if big.any():
            worst = max(worst, ((c64 - w64).abs()[big] / w64.abs()[big]).max().item())
        out[name] = c
    return out, worst


def dtype_name(dtype: torch.dtype) -> str:
    return next(k for k, v in DTYPES.items() if v == dtype)


@dataclass(frozen=True)
class _Prepared:
    src: Path
    weights: str
    state: dict[str, torch.Tensor]
    info: dict
    meta: dict
    max_rel_error: float


def prepare(src: Path, weights: str, dtype: str) -> _Prepared:
    """One checkpoint's set of weights in `dtype` and the header to write with it ("packed" added);
    nothing is written, so that every source is read and checked before the first file is."""
    sets, info = read_model(src)
    if weights not in sets:
        have = ", ".join(sets) or "none"
        raise DtoolsError(f"{src}: holds no {weights} weights (it holds {have}); choose --weights from those")
    state, err = cast(sets[weights], DTYPES[dtype], src)
    earlier = info.get("packed") if isinstance(info.get("packed"), dict) else None
    meta = {k: v for k, v in info.items() if k not in NOT_COPIED and k != "packed"}
    meta["packed"] = {
        "from": str(src), "sha256": file_digest(src, "sha256"), "weights": weights, "dtype": dtype,
        "max_rel_error": err, "date": time.strftime("%Y-%m-%d", time.gmtime()),
        **({"earlier": earlier} if earlier else {}),
    }
    return _Prepared(src, weights, state, info, meta, err)


def write(p: _Prepared, out: Path, force: bool) -> Packed:
    save_model(out, {p.weights: p.state}, config=p.info["model"], model_type=p.info["model_type"],
               meta=p.meta, force=force)
    return Packed(out, p.src, sum(t.numel() for t in p.state.values()), out.stat().st_size,
                  p.src.stat().st_size, p.max_rel_error)


def sources(path: str | os.PathLike, guide: bool) -> tuple[Path, Path | None]:
    """The checkpoint to pack (a run folder's model.safetensors, or a file) and its guide, if it has one
    and `guide`: the guide.safetensors beside it, which `dtools sample` would autoguide it with."""
    src = model_file(path)
    if not src.is_file():
        raise DtoolsError(f"{src}: no such checkpoint")
    g = src.parent / RUN_GUIDE_FILE
    if not guide or not g.is_file() or g.resolve() == src.resolve():
        return src, None
    return src, g


def pack(path: str | os.PathLike, out: str | os.PathLike, weights: str = "ema", dtype: str = DEFAULT_DTYPE,
         guide: bool = True, force: bool = False) -> list[Packed]:
    """Pack a run (or checkpoint) into the folder `out`: OUT/model.safetensors, and OUT/guide.safetensors
    when the source has a guide. Every existing target is refused before anything is written unless
    `force`; a source is never its own target; every source is read and checked before anything is
    written."""
    if dtype not in DTYPES:
        raise DtoolsError(f"unknown --dtype {dtype!r}; choose {', '.join(DTYPES)}")
    src, g = sources(path, guide)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DtoolsError(f"{out} is a file; -o names the folder to write ({RUN_MODEL_FILE} and "
                          f"{RUN_GUIDE_FILE} go in it)")
    jobs = [(src, out / RUN_MODEL_FILE, weights)] + ([(g, out / RUN_GUIDE_FILE, "ema")] if g else [])
    for s, target, _ in jobs:
        if target.exists() and target.resolve() == s.resolve():
            raise DtoolsError(f"{target}: would overwrite its own source; pack into another folder")
        if target.exists() and not force:
            raise DtoolsError(f"{target} already exists; pass --force to overwrite it")
    if not force and g is None and (out / RUN_GUIDE_FILE).exists():
        raise DtoolsError(f"{out / RUN_GUIDE_FILE} is there but {src} has no guide to go with it: "
                          "`dtools sample` would guide the packed model with a stranger; pack elsewhere")
    ready = [(prepare(s, w, dtype), target) for s, target, w in jobs]  # every source read and checked
    out.mkdir(parents=True, exist_ok=True)
    done = []
    for p, target in ready[::-1]:  # the guide first: an interrupted pack leaves no model, not one unguided
        done.append(write(p, target, force))
    if g is None and force and (out / RUN_GUIDE_FILE).exists():
        (out / RUN_GUIDE_FILE).unlink()  # a stale guide would autoguide the new model
    return done[::-1]
