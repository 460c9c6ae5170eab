"""Safetensors files that describe themselves: tensors, plus a JSON object in the header.

Every file dtools writes with tensors in it (model checkpoints, training states, FID statistics,
converted Inception weights) is one of these: the JSON object sits in the safetensors metadata under
the key ``dtools`` and names its `format` (e.g. "dtools.model"), `format_version` and the
`dtools_version` that wrote it. JSON floats round-trip float64 exactly. No pickle anywhere.

This module is the container only; what a format holds belongs to its owner (dtools.checkpoint for
models, dtools.train.state for training states, dtools.fid for statistics and weights).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError as SafetensorsError
from safetensors.torch import load_file, save_file

from dtools import __version__
from dtools.errors import DtoolsError, brief, first_line
from dtools.fileio import atomic_save

HEADER_KEY = "dtools"
FORMAT_VERSION = 1


def save_tensors(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict[str, Any], force: bool = False
) -> None:
    """Write tensors + JSON header atomically (temp file, fsync, rename)."""
    header = {"format_version": FORMAT_VERSION, "dtools_version": __version__, **meta}
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_save(path, lambda tmp: _save_file(flat, tmp, {HEADER_KEY: json.dumps(header)}), force)


def _save_file(flat: dict[str, torch.Tensor], tmp: str, metadata: dict[str, str]) -> None:
    """safetensors' save_file, its own error type for a failed write (e.g. `IoError(Os { code: 28,
    kind: StorageFull, ... })`) raised as the OSError it stands for, so that a full disk reads as ENOSPC
    everywhere (the `train` checkpoint, the command line's one line)."""
    try:
        save_file(flat, tmp, metadata=metadata)
    except SafetensorsError as e:
        code = re.search(r"code: (\d+)", str(e))
        if code is None:
            raise OSError(f"{tmp}: {first_line(e)}") from None
        errno_ = int(code.group(1))
        raise OSError(errno_, os.strerror(errno_), tmp) from None


# What a safetensors file may hold before any of it is trusted (docs/formats.md, "Hostile and corrupt
# files"): a header of at most MAX_HEADER bytes, these dtypes (bytes per element), at most MAX_DIMS
# dimensions, and tensors that tile the data section exactly, in order, without gaps or overlaps.
MAX_HEADER = 16 * 2**20
MAX_DIMS = 8
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "BOOL": 1}


def check_layout(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    """Read a safetensors file's header alone and check it against the file: returns its metadata (str ->
    str) and the shape of every tensor. A header that is too long, not a JSON object, names an unknown
    dtype, a shape that its bytes do not hold, or offsets that leave the data section, overlap, leave
    gaps or do not reach its end, is a one-line DtoolsError; no tensor data is read."""
    p = Path(path)
    if not p.exists():
        raise DtoolsError(f"{p}: no such file")
    if p.is_dir():
        raise DtoolsError(f"{p}: is a directory, expected a .safetensors file")
    try:
        with open(p, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise ValueError(f"{size} bytes, shorter than a header")
            n = int.from_bytes(head, "little")
            if n < 2 or n > MAX_HEADER or n > size - 8:
                raise ValueError(f"its header length field says {n} bytes, the file holds {size - 8} "
                                 f"after it (at most {MAX_HEADER} allowed)")
            header = json.loads(f.read(n))
    except RecursionError:
        raise DtoolsError(f"{p}: not a safetensors checkpoint (its header nests too deeply)") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise DtoolsError(f"{p}: not a safetensors checkpoint ({first_line(e)[:200]})") from None
    if not isinstance(header, dict):
        raise DtoolsError(f"{p}: not a safetensors checkpoint (its header is a JSON {type(header).__name__})")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise _damaged(p, "its __metadata__ is not an object of strings")
    shapes: dict[str, tuple[int, ...]] = {}
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        shapes[name] = _entry(p, name, entry, spans)
    spans.sort()
    end, data = 0, size - 8 - n
    for begin, stop, name in spans:
        if begin != end:
            what = "overlaps the tensor before it" if begin < end else f"leaves a gap of {begin - end} bytes"
            raise _damaged(p, f"tensor {brief(name)} {what}")
        end = stop
    if end != data:
        raise _damaged(p, f"its tensors span {end} bytes, the data section holds {data}: truncated, or extra "
                          "bytes")
    return meta, shapes


def _entry(p: Path, name: str, entry: Any, spans: list[tuple[int, int, str]]) -> tuple[int, ...]:
    """The shape of one tensor entry of a safetensors header, checked (and its byte span added to `spans`)."""
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise _damaged(p, f"tensor {brief(name)} is not described by dtype, shape and data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
        raise DtoolsError(f"{p}: tensor {brief(name)} has dtype {brief(dtype)}, which dtools does not read "
                          f"({', '.join(DTYPE_BYTES)})")
    if (not isinstance(shape, list) or len(shape) > MAX_DIMS
            or not all(_is_int(d) and d >= 0 for d in shape)):
        raise _damaged(p, f"tensor {brief(name)} has shape {brief(shape)}")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) and o >= 0 for o in offsets):
        raise _damaged(p, f"tensor {brief(name)} has data_offsets {brief(offsets)}")
    begin, stop = offsets
    nbytes = math.prod(shape) * DTYPE_BYTES[dtype]
    if stop - begin != nbytes:
        raise _damaged(p, f"tensor {brief(name)} of shape {shape} {dtype} needs {nbytes} bytes, its offsets "
                          f"hold {stop - begin}")
    spans.append((begin, stop, name))
    return tuple(shape)


def _damaged(p: Path, what: str) -> DtoolsError:
    return DtoolsError(f"{p}: damaged checkpoint ({what})")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def read_header(path: str | os.PathLike, expected_format: str | None) -> dict[str, Any]:
    """Read and check only the JSON header (cheap: no tensor data is loaded; the file's layout is
    checked, `check_layout`); `expected_format` None accepts any dtools format (the caller looks at
    "format")."""
    p = Path(path)
    meta, _ = check_layout(p)
    raw = meta.get(HEADER_KEY)
    if raw is None:
        raise DtoolsError(f"{p}: a safetensors file, but not a dtools checkpoint (no {HEADER_KEY!r} key)")
    try:
        info = json.loads(raw)
    except RecursionError:
        raise DtoolsError(f"{p}: damaged dtools header (it nests too deeply)") from None
    except ValueError as e:
        raise DtoolsError(f"{p}: damaged dtools header ({first_line(e)[:200]})") from None
    if not isinstance(info, dict):
        raise DtoolsError(f"{p}: damaged dtools header (a JSON {type(info).__name__}, not an object)")
    fmt = info.get("format")
    if not isinstance(fmt, str | None):
        raise DtoolsError(f"{p}: damaged dtools header ('format' is {brief(fmt)})")
    version = info.get("format_version", 0)
    if not _is_int(version):
        raise DtoolsError(f"{p}: damaged dtools header ('format_version' is {brief(version)})")
    if expected_format is not None and fmt != expected_format:
        raise DtoolsError(f"{p}: is a {fmt!r} file, expected a {expected_format!r} checkpoint")
    if version > FORMAT_VERSION:
        raise DtoolsError(
            f"{p}: written by dtools {brief(info.get('dtools_version'))} in format v{version}; "
            f"this dtools reads up to v{FORMAT_VERSION}, please upgrade"
        )
    return info


def tensor_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """The name and shape of every tensor in a safetensors file, from its checked header (no data is read)."""
    return check_layout(path)[1]


def load_tensors(
    path: str | os.PathLike, expected_format: str
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load tensors and header; any truncation or corruption becomes a one-line DtoolsError."""
    info = read_header(path, expected_format)  # the layout is checked: the data below is what it says
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorsError, OSError, ValueError, RuntimeError) as e:
        raise DtoolsError(f"{path}: damaged checkpoint ({first_line(e)})") from None
    return tensors, info
