"""A noise schedule named on the command line (`--beta`, `dtools schedule`, `dtools noise`): a registry name
of dtools.schedules, or betas in a `.npy` file or on stdin (``-``), read through dtools.fileio."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dtools.errors import DtoolsError
from dtools.fileio import is_stdio, read_npy
from dtools.schedules import SCHEDULES, adjust, make_schedule, validate_betas


def load_schedule(spec: str, **kwargs) -> np.ndarray:
    """A schedule (betas, float64 [T]) by registry name, or from a `.npy` file or ``-``, validated.

    `kwargs` shape named schedules (dtools.schedules.make_schedule); `max_beta` and
    `zero_terminal_snr` apply to files too.
    """
    if spec in SCHEDULES:
        return make_schedule(spec, **kwargs)
    if is_stdio(spec) or spec.endswith(".npy") or Path(spec).exists():
        name = "stdin" if is_stdio(spec) else spec
        betas = validate_betas(read_npy(spec), name)
        zero_snr = kwargs.get("zero_terminal_snr", False)
        return adjust(betas, max_beta=kwargs.get("max_beta"), zero_terminal_snr=zero_snr, name=name)
    raise DtoolsError(f"{spec!r} is neither a schedule name ({', '.join(SCHEDULES)}) nor a .npy file")
