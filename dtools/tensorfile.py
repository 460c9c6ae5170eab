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
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError as SafetensorsError
from safetensors.torch import load_file, save_file

from dtools import __version__
from dtools.errors import DtoolsError, first_line
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


def read_header(path: str | os.PathLike, expected_format: str | None) -> dict[str, Any]:
    """Read and check only the JSON header (cheap: no tensor data is loaded); `expected_format` None
    accepts any dtools format (the caller looks at "format")."""
    p = Path(path)
    if not p.exists():
        raise DtoolsError(f"{p}: no such file")
    if p.is_dir():
        raise DtoolsError(f"{p}: is a directory, expected a .safetensors checkpoint")
    try:
        with open(p, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError("file too short")
            n = int.from_bytes(head, "little")
            if n <= 0 or n > 100_000_000 or n > p.stat().st_size - 8:
                raise ValueError("bad header length")
            header = json.loads(f.read(n))
        meta = header.get("__metadata__") or {}
        raw = meta.get(HEADER_KEY)
        if raw is None:
            raise DtoolsError(f"{p}: a safetensors file, but not a dtools checkpoint (no {HEADER_KEY!r} key)")
        info = json.loads(raw)
    except DtoolsError:
        raise
    except (ValueError, UnicodeDecodeError, AttributeError) as e:
        raise DtoolsError(f"{p}: not a safetensors checkpoint ({e})") from None
    fmt = info.get("format")
    if expected_format is not None and fmt != expected_format:
        raise DtoolsError(f"{p}: is a {fmt!r} file, expected a {expected_format!r} checkpoint")
    if info.get("format_version", 0) > FORMAT_VERSION:
        raise DtoolsError(
            f"{p}: written by dtools {info.get('dtools_version')} in format v{info['format_version']}; "
            f"this dtools reads up to v{FORMAT_VERSION}, please upgrade"
        )
    return info


def tensor_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """The name and shape of every tensor in a safetensors file, from its header (no data is read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorsError, OSError, ValueError, RuntimeError) as e:
        raise DtoolsError(f"{path}: damaged checkpoint ({first_line(e)})") from None


def load_tensors(
    path: str | os.PathLike, expected_format: str
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load tensors and header; any truncation or corruption becomes a one-line DtoolsError."""
    info = read_header(path, expected_format)
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorsError, OSError, ValueError, RuntimeError) as e:
        raise DtoolsError(f"{path}: damaged checkpoint ({first_line(e)})") from None
    return tensors, info
