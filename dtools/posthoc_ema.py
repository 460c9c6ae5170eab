"""Post-hoc EMA (Karras et al. 2024, EDM2, section 3): choose the EMA length after training.

During a run (`dtools train --posthoc-ema N`) two power-function EMAs of the weights are tracked, of
relative widths TRACKED (σ_rel 0.05 and 0.10), and each is saved N times, evenly over the run, as
RUN/posthoc/step_SSSSSSS-W.WWW.safetensors (an ordinary model checkpoint whose "ema_length" is W and
"step" is the EMA's update count). Afterwards any power-function EMA ending at the last snapshot, of
any width σ_rel, is approximated by a weighted sum of the snapshots' weights.

The maths. After t updates a power-function EMA of exponent γ has averaged the weights θ_τ of the run
with the profile p_{γ,t}(τ) = (γ + 1) τ^γ / t^(γ+1) on 0 < τ ≤ t (dtools.ema: its decay
(1 - 1/t)^(γ+1) makes it so). Weights are linear in the profile: Σ_i x_i θ̂_i averages the run with
Σ_i x_i p_i. So the snapshot weights x that best make a target profile p* are those of least squares
in L²: A x = b with A_ij = <p_i, p_j> and b_i = <p_i, p*>, where for two profiles

    <p_{γa,ta}, p_{γb,tb}> = (γa + 1)(γb + 1) m^(γa+γb+1) / ((γa + γb + 1) ta^(γa+1) tb^(γb+1)),
    m = min(ta, tb),

computed in logarithms (narrow profiles have large γ). The residual ‖Σ x_i p_i - p*‖² / ‖p*‖² says
how well the snapshots can make the target: small inside the widths and times they cover, large for
a profile narrower than the snapshots are dense.

Pure maths and the snapshot files' names; reading and writing the weights is dtools.commands.ema's
and the Trainer's.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from dtools.ema import MAX_SIGMA_REL, power_gamma

TRACKED: tuple[float, ...] = (0.05, 0.10)  # the widths a run tracks (EDM2's choice)
SNAPSHOT_DIR = "posthoc"  # in the run folder
_NAME = re.compile(r"^step_(\d{7,})-(\d\.\d{3})\.safetensors$")
# the widths `dtools ema --choose` tries by default: from the narrowest the snapshots of a short run
# make well to the widest power profile there is (MAX_SIGMA_REL)
CANDIDATES: tuple[float, ...] = (0.05, 0.08, 0.11, 0.15, 0.20, 0.25)
MIN_SIGMA_REL = 0.01  # narrower targets need more snapshots than a run keeps


def snapshot_name(step: int, sigma_rel: float) -> str:
    """The file name of the snapshot of the σ_rel profile after `step` updates."""
    return f"step_{step:07d}-{sigma_rel:.3f}.safetensors"


def parse_snapshot_name(name: str) -> tuple[int, float] | None:
    """(step, σ_rel) of a snapshot's file name; None for any other name."""
    m = _NAME.match(name)
    return None if m is None else (int(m.group(1)), float(m.group(2)))


def snapshot_due(progress: float, last: float, count: int) -> bool:
    """Whether a run `progress` of the way (0 to 1) owes a snapshot, its last one taken at progress
    `last` (0: none yet): `count` snapshots over the run, at progress k / count. A run made longer
    afterwards (--resume with more steps or minutes) goes on taking them at its new k / count."""
    slot = lambda p: math.floor(p * count + 1e-9)  # noqa: E731
    return slot(progress) > slot(last)


def profile_products(gamma_a, t_a, gamma_b, t_b) -> np.ndarray:
    """<p_{γa,ta}, p_{γb,tb}>, the L² inner product of two power profiles (module doc); broadcasts."""
    ga, ta, gb, tb = (np.asarray(v, dtype=np.float64) for v in (gamma_a, t_a, gamma_b, t_b))
    m = np.minimum(ta, tb)
    log = (np.log(ga + 1) + np.log(gb + 1) - np.log(ga + gb + 1) + (ga + gb + 1) * np.log(m)
           - (ga + 1) * np.log(ta) - (gb + 1) * np.log(tb))
    return np.exp(log)


@dataclass(frozen=True)
class Reconstruction:
    """The snapshot weights of a target profile and how well they make it."""

    coefficients: np.ndarray  # float64 [n]: weights of the snapshots, in the order given
    error: float  # ‖Σ x_i p_i - p*‖² / ‖p*‖²: 0 exact, 1 as bad as nothing


def solve(snapshots: list[tuple[float, int]], sigma_rel: float, t: int) -> Reconstruction:
    """The least-squares weights of `snapshots` ((σ_rel, step) each) that make the power profile of
    width `sigma_rel` after `t` updates."""
    if not snapshots:
        raise ValueError("no snapshots")
    check_sigma_rel(sigma_rel)
    gammas = np.array([power_gamma(s) for s, _ in snapshots])
    steps = np.array([float(step) for _, step in snapshots])
    if not (steps > 0).all() or t <= 0:
        raise ValueError("snapshot steps must be positive")
    g = power_gamma(sigma_rel)
    a = profile_products(gammas[:, None], steps[:, None], gammas[None, :], steps[None, :])
    b = profile_products(gammas, steps, g, float(t))
    # the scale of A spans decades (it falls like 1/t): rescale to unit diagonal before solving
    d = 1.0 / np.sqrt(np.diag(a))
    y = np.linalg.lstsq(a * d[:, None] * d[None, :], b * d, rcond=1e-12)[0]
    x = y * d
    norm = float(profile_products(g, t, g, t))
    residual = norm - 2.0 * float(x @ b) + float(x @ a @ x)
    return Reconstruction(x, max(residual, 0.0) / norm)


def check_sigma_rel(value: float) -> float:
    """A target width in [MIN_SIGMA_REL, MAX_SIGMA_REL], else ValueError naming the range."""
    if not (math.isfinite(value) and MIN_SIGMA_REL <= value <= MAX_SIGMA_REL):
        raise ValueError(f"an EMA length is a fraction of the run in [{MIN_SIGMA_REL:g}, "
                         f"{MAX_SIGMA_REL:.2f}] (no power-function EMA is wider), got {value:g}")
    return value
