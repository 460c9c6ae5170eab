"""The forward process q(x_t | x_0) made visible: noise images under several schedules and timesteps.

Math on arrays and tensors; `dtools.commands.noise` does the I/O.

Timesteps follow the project's 0-based convention (dtools.diffusion): index t = 0..T-1 draws

    x_{t+1} = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε,   ᾱ_t = alphas_cumprod[t] = Π_{s ≤ t} (1 - β_s),

so t = 0 is x_1 (one step of noise, std sqrt(β_1): 0.01 for `linear`, about 1 grey level) and
t = T-1 is x_T. The token ``x0`` in a timestep list stands for the clean image itself.

Noise: image i gets one ε ~ N(0, I), drawn in float64 from a generator seeded with (seed, i), and that
same ε is used for every schedule and every timestep. Rows therefore differ only by schedule, columns
only by ᾱ_t, and image i's noise does not depend on which other images are noised with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from dtools.diffusion import Schedule, q_sample
from dtools.errors import DtoolsError, OptionError
from dtools.images import to_uint8
from dtools.schedules import SCHEDULES, identify

CLEAN = "x0"  # timestep token: the un-noised image x_0
Timestep = int | None  # None = CLEAN


def parse_timesteps(text: str) -> list[Timestep]:
    """'x0,0,50,999' -> [None, 0, 50, 999]; every item an integer index or the token x0."""
    items = [s.strip() for s in str(text).split(",")]
    if not text or not any(items):
        raise OptionError("-t", "give timesteps as a comma-separated list, e.g. -t 0,50,100,250,500,999")
    out: list[Timestep] = []
    for s in items:
        if s.lower() == CLEAN:
            out.append(None)
            continue
        try:
            out.append(int(s))
        except ValueError:
            raise OptionError(
                "-t", f"{s!r} is not a timestep; use integer indices 0..T-1 or '{CLEAN}' for the clean image"
            ) from None
    return out


def check_timesteps(timesteps: Sequence[Timestep], T: int, name: str = "the schedule") -> None:
    """Every index must lie in [0, T-1] of the schedule called `name`."""
    for t in timesteps:
        if t is not None and not 0 <= t < T:
            raise OptionError(
                "-t", f"timestep {t} is out of range for {name} (T = {T}): use 0..{T - 1}, or {CLEAN}"
            )


def schedule_label(spec: str, betas: np.ndarray) -> str:
    """A row label for the schedule given as `spec`: its name, also for a file that holds a named
    schedule (`dtools schedule cosine > beta.npy` is labelled 'cosine', not 'beta'), else the file's stem."""
    if spec in SCHEDULES:
        return spec
    name = identify(betas)
    if name is not None:
        return name
    return "stdin" if spec == "-" else Path(spec).stem


def timestep_label(t: Timestep) -> str:
    return CLEAN if t is None else str(t)


def image_eps(shape: tuple[int, ...], seed: int, i: int) -> torch.Tensor:
    """ε ~ N(0, I) of `shape` for image i under `seed`, float64; depends only on (seed, i, shape)."""
    if seed < 0:
        raise DtoolsError(f"--seed must be >= 0, got {seed}")
    rng = np.random.default_rng([int(seed), int(i)])
    return torch.from_numpy(rng.standard_normal(shape))


def forward_noise(
    x0: torch.Tensor, schedules: Sequence[Schedule], timesteps: Sequence[Timestep], eps: torch.Tensor
) -> torch.Tensor:
    """x_t for every (image, schedule, timestep), with the same ε for all schedules and timesteps.

    x0, eps: (N, C, H, W), float (use float64 for exact statistics). Returns (N, S, K, C, H, W)
    in x0's dtype, not clipped: entry [n, s, k] is q_sample(schedules[s], x0[n], timesteps[k], eps[n]),
    or x0[n] itself where timesteps[k] is None (the token x0).
    """
    assert x0.shape == eps.shape and x0.ndim == 4, (x0.shape, eps.shape)
    n = x0.shape[0]
    rows = []
    for sched in schedules:
        check_timesteps(timesteps, sched.T)
        cols = []
        for t in timesteps:
            if t is None:
                cols.append(x0)
            else:
                cols.append(q_sample(sched, x0, torch.full((n,), t, dtype=torch.long), eps))  # (N, C, H, W)
        rows.append(torch.stack(cols, dim=1))  # (N, K, C, H, W)
    return torch.stack(rows, dim=1)  # (N, S, K, C, H, W)


def noise_images(
    images: np.ndarray,
    betas: Sequence[np.ndarray],
    timesteps: Sequence[Timestep],
    seed: int = 0,
    names: Sequence[str] | None = None,
) -> np.ndarray:
    """uint8 [N, H, W, C] -> uint8 [N·S·K, H, W, C], ordered image-major, then schedule, then timestep.

    The math runs in float64 on data scaled to [-1, 1] (images.from_uint8's scaling); x_t is clipped to
    [-1, 1] and rounded to the nearest grey level (in float64) only at the end. Lay the
    result out with `dtools grid --nrow K` (K = len(timesteps)): one row per (image, schedule), one
    column per timestep.
    """
    if images.ndim != 4 or images.dtype != np.uint8 or images.shape[0] == 0:
        raise DtoolsError(f"noise needs a uint8 batch [N,H,W,C], got {images.dtype} {list(images.shape)}")
    if not betas:
        raise DtoolsError("give at least one schedule (--beta NAME or --beta FILE.npy)")
    if not timesteps:
        raise DtoolsError("give at least one timestep (-t 0,50,100,...)")
    names = list(names) if names is not None else [f"#{j + 1}" for j in range(len(betas))]
    schedules = [Schedule.from_betas(b) for b in betas]
    for name, sched in zip(names, schedules, strict=True):
        check_timesteps(timesteps, sched.T, f"schedule {name}")
    out = []
    for i, img in enumerate(images):
        x0 = torch.tensor(img).permute(2, 0, 1)[None].double() / 127.5 - 1.0  # (1, C, H, W)
        eps = image_eps(tuple(x0.shape[1:]), seed, i)[None]  # (1, C, H, W)
        x = forward_noise(x0, schedules, timesteps, eps)  # (1, S, K, C, H, W)
        out.append(to_uint8(x.reshape(-1, *x.shape[3:])))  # (S·K, H, W, C)
    return np.concatenate(out)
