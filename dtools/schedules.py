"""Noise schedules: pure float64 functions returning betas of shape [T], and their validation.

A schedule file is a 1-D float64 `.npy` of betas, β_1..β_T (index 0 holds β_1). Everything else
(ᾱ_t, SNR, posterior variances) is derived from it in `dtools.diffusion`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dtools.errors import DtoolsError, OptionError


def linear(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """Ho et al. 2020: β rises linearly from `beta_start` to `beta_end` (1e-4 → 0.02 at T=1000)."""
    return np.linspace(beta_start, beta_end, T, dtype=np.float64)


def scaled_linear(T: int, beta_start: float = 0.00085, beta_end: float = 0.012) -> np.ndarray:
    """Linear in sqrt(β) (Stable Diffusion's schedule): gentler at the start than `linear`."""
    return np.linspace(math.sqrt(beta_start), math.sqrt(beta_end), T, dtype=np.float64) ** 2


def sigmoid(T: int, beta_start: float = 1e-4, beta_end: float = 0.02, width: float = 6.0) -> np.ndarray:
    """The seed report's sigmoid schedule: β follows a logistic curve over [-width, width]."""
    x = np.linspace(-width, width, T, dtype=np.float64)
    return beta_start + (beta_end - beta_start) / (1.0 + np.exp(-x))


def cosine_alphas_cumprod(t: np.ndarray, s: float = 0.008) -> np.ndarray:
    """Nichol & Dhariwal 2021, eq. 17: ᾱ(t) = f(t)/f(0), f(t) = cos²(π/2 · (t + s)/(1 + s)), t ∈ [0, 1]."""
    f = np.cos((np.asarray(t, dtype=np.float64) + s) / (1.0 + s) * math.pi / 2) ** 2
    f0 = math.cos(s / (1.0 + s) * math.pi / 2) ** 2
    return f / f0


def cosine(T: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Nichol & Dhariwal 2021: β_t = 1 - ᾱ(t/T)/ᾱ((t-1)/T), clipped at `max_beta` (0.999 in the paper)."""
    t = np.arange(T + 1, dtype=np.float64) / T
    ab = cosine_alphas_cumprod(t, s)
    return np.minimum(1.0 - ab[1:] / ab[:-1], max_beta)


@dataclass(frozen=True)
class ScheduleSpec:
    fn: Callable[..., np.ndarray]
    summary: str


SCHEDULES: dict[str, ScheduleSpec] = {
    "linear": ScheduleSpec(linear, "β linear from --beta-start (1e-4) to --beta-end (0.02); Ho et al. 2020"),
    "cosine": ScheduleSpec(cosine, "ᾱ_t follows cos²; Nichol & Dhariwal 2021 (s=0.008, β ≤ 0.999)"),
    "sigmoid": ScheduleSpec(
        sigmoid, "β follows a logistic curve from --beta-start to --beta-end; the seed's default"
    ),
    "scaled-linear": ScheduleSpec(scaled_linear, "sqrt(β) linear from 0.00085 to 0.012; Stable Diffusion"),
}


def make_schedule(
    name: str,
    T: int = 1000,
    *,
    beta_start: float | None = None,
    beta_end: float | None = None,
    s: float = 0.008,
    max_beta: float | None = None,
    zero_terminal_snr: bool = False,
) -> np.ndarray:
    """Build a named schedule; `max_beta` clips β afterwards, `zero_terminal_snr` rescales (Lin et al.)."""
    if name not in SCHEDULES:
        raise DtoolsError(f"unknown schedule {name!r}; choose one of: {', '.join(SCHEDULES)}")
    if T < 2:
        raise DtoolsError(f"T must be at least 2, got {T}")
    kwargs: dict[str, float] = {}
    if name == "cosine":
        if beta_start is not None or beta_end is not None:
            raise OptionError(
                "--beta-start" if beta_start is not None else "--beta-end",
                "the cosine schedule has no --beta-start/--beta-end; it is set by --s and --max-beta",
            )
        kwargs["s"] = s
    else:
        if beta_start is not None:
            kwargs["beta_start"] = beta_start
        if beta_end is not None:
            kwargs["beta_end"] = beta_end
        lo, hi = kwargs.get("beta_start", 1e-9), kwargs.get("beta_end", 1 - 1e-9)
        if not (0 < lo < 1 and 0 < hi < 1):
            raise OptionError("--beta-start/--beta-end", "must lie in (0, 1)")
    betas = SCHEDULES[name].fn(T, **kwargs)
    return adjust(betas, max_beta=max_beta, zero_terminal_snr=zero_terminal_snr, name=name)


def identify(betas: np.ndarray) -> str | None:
    """The registry name whose default schedule at the same T is `betas` (to float64 rounding), or None:
    `dtools schedule cosine -T 1000 > beta.npy` gives a file that is recognised as 'cosine'."""
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 1 or betas.shape[0] < 2:
        return None
    for name in SCHEDULES:
        if np.allclose(make_schedule(name, betas.shape[0]), betas, rtol=1e-12, atol=0.0):
            return name
    return None


def adjust(
    betas: np.ndarray,
    *,
    max_beta: float | None = None,
    zero_terminal_snr: bool = False,
    name: str = "schedule",
) -> np.ndarray:
    """Clip β at `max_beta`, then (optionally) rescale to zero terminal SNR; any schedule, named or loaded."""
    if max_beta is not None:
        if not 0 < max_beta <= 1:
            raise OptionError("--max-beta", f"must lie in (0, 1], got {max_beta}")
        betas = np.minimum(betas, max_beta)
    if zero_terminal_snr:
        betas = rescale_zero_terminal_snr(betas)
    return validate_betas(betas, name)


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Lin et al. 2023, Algorithm 1: shift and scale sqrt(ᾱ) so that ᾱ_T = 0 and ᾱ_1 is unchanged."""
    sqrt_ab = np.sqrt(np.cumprod(1.0 - betas))
    first, last = sqrt_ab[0], sqrt_ab[-1]
    sqrt_ab = (sqrt_ab - last) * first / (first - last)
    ab = sqrt_ab**2
    alphas = np.concatenate([ab[:1], ab[1:] / ab[:-1]])
    return 1.0 - alphas


def validate_betas(betas: np.ndarray, name: str = "schedule") -> np.ndarray:
    """Check that an array is a usable schedule and return it as contiguous float64 [T].

    Rules: 1-D, at least 2 steps, a real floating or integer dtype, every β finite and in (0, 1);
    the last β may be exactly 1 (a zero-terminal-SNR schedule). ᾱ_t = Π(1 - β) must fall strictly and
    stay in (0, 1] up to the last step in float64 (its last value may be 0).
    """
    arr = np.asarray(betas)
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise DtoolsError(f"{name}: a schedule must hold real numbers, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise DtoolsError(f"{name}: a schedule must be 1-D [T], got shape {list(arr.shape)}")
    if arr.shape[0] < 2:
        raise DtoolsError(f"{name}: a schedule needs at least 2 steps, got {arr.shape[0]}")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        bad = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise DtoolsError(f"{name}: β is not finite at step {bad + 1} ({arr[bad]})")
    body, last = arr[:-1], arr[-1]
    if np.any(body <= 0) or np.any(body >= 1) or not 0 < last <= 1:
        bad = int(np.flatnonzero((arr <= 0) | (arr > 1) | np.r_[body >= 1, False])[0])
        raise DtoolsError(f"{name}: β must lie in (0, 1), but step {bad + 1} has β = {float(arr[bad])!r}")
    ab = np.cumprod(1.0 - arr)
    stuck = np.r_[ab[:-1] <= 0, False] | np.r_[False, np.diff(ab) >= 0]
    if stuck.any():  # float64 ran out: β below 1e-16 (1 - β rounds to 1), or ᾱ underflowing to 0 early
        i = int(np.flatnonzero(stuck)[0])
        before = f" after {float(ab[i - 1])!r}" if i else ""
        raise DtoolsError(f"{name}: ᾱ must fall strictly and stay above 0 before the last step, but at step "
                          f"{i + 1} of {arr.shape[0]} it is {float(ab[i])!r}{before} (β too small, or too "
                          "many steps for float64)")
    return arr


def summarize(betas: np.ndarray) -> dict[str, float | int | None]:
    """The numbers a user checks first: T, β range, ᾱ_T, and the SNR at both ends (in dB too).

    `steps_half_signal` is the first t (1-based) with ᾱ_t < 0.5, or None if ᾱ never drops that low;
    `snr_T_db` is -inf for a zero-terminal-SNR schedule.
    """
    ab = np.cumprod(1.0 - betas)
    snr = ab / np.maximum(1.0 - ab, 1e-300)
    below_half = np.flatnonzero(ab < 0.5)
    return {
        "T": int(betas.shape[0]),
        "beta_min": float(betas.min()),
        "beta_max": float(betas.max()),
        "beta_first": float(betas[0]),
        "beta_last": float(betas[-1]),
        "alpha_bar_T": float(ab[-1]),
        "snr_1": float(snr[0]),
        "snr_T": float(snr[-1]),
        "snr_T_db": float(10 * np.log10(snr[-1])) if snr[-1] > 0 else float("-inf"),
        "steps_half_signal": int(below_half[0]) + 1 if below_half.size else None,
    }
