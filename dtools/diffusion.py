"""Gaussian diffusion math (Ho et al. 2020; Nichol & Dhariwal 2021): pure functions on tensors.

No nn.Module, no I/O. The network is passed to samplers at call time; nothing here knows it.

Conventions
- `betas[i]` is β_{i+1}: timestep index t = 0..T-1, and the network is conditioned on that index.
- Schedule quantities are float64 and cast to the data's dtype only when applied.
- Parameterizations: "eps" (the network predicts ε, the seed's choice), "x0", "v"
  (Salimans & Ho 2022: v = sqrt(ᾱ) ε - sqrt(1-ᾱ) x0), and "edm" (Karras et al. 2022's preconditioning,
  c_in, c_skip and c_out with σ_data = 0.5, written for x_t = sqrt(ᾱ) x0 + sqrt(1-ᾱ) ε).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from dtools.choices import T_DISTRIBUTIONS
from dtools.errors import DtoolsError
from dtools.schedules import validate_betas

Tensor = torch.Tensor


@dataclass(frozen=True)
class Parameterization:
    """What the network predicts, as maps at the noise level α = sqrt(ᾱ_t), σ = sqrt(1-ᾱ_t):

    - `target(α, σ, x0, ε)`: the regression target;
    - `split(α, σ, out, x_t)`: the output as (x0_hat, eps_hat);
    - `min_snr(min(SNR, γ), SNR)`: the weight on its MSE that makes the x0-space weight min(SNR, γ);
    - `c_in(α, σ)`: the factor on x_t that the network sees (1 but for "edm").
    """

    target: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
    split: Callable[[Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]
    min_snr: Callable[[Tensor, Tensor], Tensor]
    c_in: Callable[[Tensor, Tensor], Tensor] | None = None


def _split_eps(a: Tensor, s: Tensor, out: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    # With ᾱ_t = 0 (zero terminal SNR) an ε-prediction says nothing about x0; x0 is then taken as 0.
    return torch.where(a > 0, (x - s * out) / a.clamp_min(1e-300), torch.zeros_like(x)), out


# EDM's σ_data (Karras et al. 2022): the standard deviation its preconditioning assumes of the images
EDM_SIGMA_DATA = 0.5


def _edm_q(a: Tensor, s: Tensor) -> Tensor:
    """sqrt(σ² + α² σ_data²): the standard deviation of x_t for images of std σ_data (never 0)."""
    return (s * s + a * a * EDM_SIGMA_DATA**2).sqrt()


def _edm_target(a: Tensor, s: Tensor, x0: Tensor, eps: Tensor) -> Tensor:
    # EDM's F target (x0 - c_skip y) / c_out at y = x_t/α, σ_EDM = σ/α, in closed form (no 1/σ)
    d = EDM_SIGMA_DATA
    return (s * x0 / d - d * a * eps) / _edm_q(a, s)


def _edm_split(a: Tensor, s: Tensor, out: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    # x0 = c_skip y + c_out F; ε = (x_t - α x0)/σ, both in closed form
    d, q = EDM_SIGMA_DATA, _edm_q(a, s)
    return d * d * a * x / (q * q) + s * d * out / q, s * x / (q * q) - a * d * out / q


PARAMETERIZATION: dict[str, Parameterization] = {
    "eps": Parameterization(
        target=lambda a, s, x0, eps: eps, split=_split_eps, min_snr=lambda clipped, snr: clipped / snr,
    ),
    "x0": Parameterization(
        target=lambda a, s, x0, eps: x0,
        split=lambda a, s, out, x: (out, (x - a * out) / s.clamp_min(1e-300)),
        min_snr=lambda clipped, snr: clipped,
    ),
    "v": Parameterization(  # Salimans & Ho 2022
        target=lambda a, s, x0, eps: a * eps - s * x0,
        split=lambda a, s, out, x: (a * x - s * out, s * x + a * out),
        min_snr=lambda clipped, snr: clipped / (snr + 1.0),
    ),
    # Karras et al. 2022, Table 1; σ_data = 1 would make it -v. Unweighted, its x0-space weight is
    # SNR + 1/σ_data², EDM's λ(σ).
    "edm": Parameterization(
        target=_edm_target, split=_edm_split,
        min_snr=lambda clipped, snr: clipped * EDM_SIGMA_DATA**2 / (1.0 + EDM_SIGMA_DATA**2 * snr),
        c_in=lambda a, s: 1.0 / _edm_q(a, s),
    ),
}
PARAMETERIZATIONS = tuple(PARAMETERIZATION)


def lookup_parameterization(name: str) -> Parameterization:
    """The registry entry of `name`, or the one error every caller gives for an unknown one."""
    try:
        return PARAMETERIZATION[name]
    except (KeyError, TypeError):
        raise DtoolsError(f"unknown parameterization {name!r}; choose one of {PARAMETERIZATIONS}") from None


# The fixed reverse-process variance Σ_t: β_t ("beta", the upper bound) or β̃_t ("posterior").
VARIANCE_FIELDS = {"beta": "betas", "posterior": "posterior_variance"}
VARIANCES = tuple(VARIANCE_FIELDS)


def alphas_cumprod(betas: np.ndarray) -> np.ndarray:
    """ᾱ_t = Π_{s ≤ t} (1 - β_s), float64."""
    return np.cumprod(1.0 - np.asarray(betas, dtype=np.float64))


@dataclass(frozen=True)
class Schedule:
    """Everything derived from one β array, as float64 tensors of shape [T] (on CPU until `.to`)."""

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor  # ᾱ_t
    alphas_cumprod_prev: torch.Tensor  # ᾱ_{t-1}, with ᾱ_0 := 1
    posterior_variance: torch.Tensor  # β̃_t = (1-ᾱ_{t-1})/(1-ᾱ_t) β_t
    posterior_log_variance_clipped: torch.Tensor  # log β̃_t, with β̃_1 replaced by β̃_2 (β̃_1 = 0)
    posterior_mean_coef1: torch.Tensor  # on x0:  sqrt(ᾱ_{t-1}) β_t / (1-ᾱ_t)
    posterior_mean_coef2: torch.Tensor  # on x_t: sqrt(α_t) (1-ᾱ_{t-1}) / (1-ᾱ_t)

    @classmethod
    def from_betas(cls, betas: np.ndarray | torch.Tensor) -> Schedule:
        b = validate_betas(np.asarray(betas.cpu() if isinstance(betas, torch.Tensor) else betas))
        ab = alphas_cumprod(b)
        ab_prev = np.concatenate([[1.0], ab[:-1]])
        one_minus_ab = 1.0 - ab
        post_var = b * (1.0 - ab_prev) / one_minus_ab
        post_logvar = np.log(np.concatenate([post_var[1:2], post_var[1:]]))
        coef1 = b * np.sqrt(ab_prev) / one_minus_ab
        coef2 = (1.0 - ab_prev) * np.sqrt(1.0 - b) / one_minus_ab
        as64 = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))  # noqa: E731
        return cls(
            as64(b), as64(ab), as64(ab_prev), as64(post_var), as64(post_logvar), as64(coef1), as64(coef2)
        )

    @property
    def T(self) -> int:
        return int(self.betas.shape[0])

    def to(self, device: torch.device | str) -> Schedule:
        return Schedule(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))

    def snr(self) -> torch.Tensor:
        """Signal-to-noise ratio ᾱ_t / (1-ᾱ_t), float64 [T]."""
        return self.alphas_cumprod / (1.0 - self.alphas_cumprod)

    def log_sigma(self) -> torch.Tensor:
        """ln σ_t of EDM's noise level σ_t = sqrt((1-ᾱ_t)/ᾱ_t) (that of x_t/sqrt(ᾱ_t)), [T] in the
        tables' dtype, increasing in t (ᾱ_t = 0 gives +inf, ᾱ_t = 1 gives -inf)."""
        ab = self.alphas_cumprod
        return 0.5 * (torch.log1p(-ab) - torch.log(ab))


def extract(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values[t] reshaped to broadcast against `like` (B, C, H, W), in like's dtype and device."""
    out = values.to(like.device)[t.to(like.device)]
    return out.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def q_sample(s: Schedule, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Forward process in closed form: x_t = sqrt(ᾱ_t) x0 + sqrt(1-ᾱ_t) ε."""
    ab = s.alphas_cumprod
    return extract(ab.sqrt(), t, x0) * x0 + extract((1.0 - ab).sqrt(), t, x0) * eps


def training_target(
    s: Schedule, parameterization: str, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """What the network regresses: ε, x0, or v = sqrt(ᾱ_t) ε - sqrt(1-ᾱ_t) x0 (in x0's dtype)."""
    p = lookup_parameterization(parameterization)
    ab = s.alphas_cumprod
    return p.target(extract(ab.sqrt(), t, x0), extract((1.0 - ab).sqrt(), t, x0), x0, eps)


def split_prediction(
    s: Schedule, parameterization: str, model_out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a network output into (x0_hat, eps_hat), computed in float64 for stability.

    With ᾱ_t = 0 (zero terminal SNR) an ε-prediction says nothing about x0; x0 is then taken as 0.
    """
    p = lookup_parameterization(parameterization)
    out, x = model_out.double(), x_t.double()
    ab = extract(s.alphas_cumprod, t, x)
    return p.split(ab.sqrt(), (1.0 - ab).sqrt(), out, x)


def network_input(s: Schedule, parameterization: str, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the network is given for x_t: x_t itself, or c_in x_t for a preconditioned parameterization."""
    p = lookup_parameterization(parameterization)
    if p.c_in is None:
        return x_t
    ab = s.alphas_cumprod
    return x_t * extract(p.c_in(ab.sqrt(), (1.0 - ab).sqrt()), t, x_t)  # c_in over [T] in float64


def q_posterior(
    s: Schedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of q(x_{t-1} | x_t, x0) (Ho et al. eq. 6–7): μ̃_t and β̃_t."""
    mean = extract(s.posterior_mean_coef1, t, x_t) * x0 + extract(s.posterior_mean_coef2, t, x_t) * x_t
    return mean, extract(s.posterior_variance, t, x_t)


def reverse_variance(s: Schedule, kind: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The fixed reverse-process variance Σ_t: β_t ("beta", the upper bound) or β̃_t ("posterior")."""
    if kind not in VARIANCE_FIELDS:
        raise DtoolsError(f"unknown variance {kind!r}; choose one of {VARIANCES}")
    return extract(getattr(s, VARIANCE_FIELDS[kind]), t, like)


# EDM's training distribution of noise levels (Karras et al. 2022, Table 1): ln σ ~ N(P_mean, P_std²)
LOGNORMAL_P_MEAN, LOGNORMAL_P_STD = -1.2, 1.2
# the share of "lognormal" draws taken uniformly over 0..T-1 instead: EDM's lognormal alone almost never
# reaches the noisiest timesteps (P(t >= 900) = 0.5 % on cosine; t = T-1 never at zero terminal SNR),
# where every trailing sampling chain starts
LOGNORMAL_UNIFORM_SHARE = 0.1


def draw_timesteps(s: Schedule, n: int, distribution: str, device: torch.device | str) -> torch.Tensor:
    """n training timesteps [n] (int64): "uniform" over 0..T-1 (Ho et al. 2020, Algorithm 1), or
    "lognormal": EDM's ln σ ~ N(-1.2, 1.2²) over the noise level σ_t = sqrt((1-ᾱ_t)/ᾱ_t) of x_t/sqrt(ᾱ_t),
    each draw rounded to the timestep whose ln σ_t is nearest, except a share LOGNORMAL_UNIFORM_SHARE
    of the draws, uniform over 0..T-1, so that every t keeps a probability of at least share/T (t = T-1,
    where sampling starts, included). It puts the training where the loss still falls (mid noise
    levels) instead of evenly over t. Draws from torch's global generator (the device's for "uniform",
    the CPU's for "lognormal").
    """
    if distribution == "uniform":
        return torch.randint(0, s.T, (n,), device=device)
    if distribution != "lognormal":
        raise DtoolsError(f"unknown timestep distribution {distribution!r}; choose one of {T_DISTRIBUTIONS}")
    # all in float64 on the CPU (Apple's MPS has no float64; n is one batch), the timesteps then moved
    log_sigma = s.log_sigma().cpu()  # increasing in t (ᾱ_t = 0 gives +inf)
    mids = (log_sigma[1:] + log_sigma[:-1]) / 2  # boundaries between neighbouring t
    draw = torch.randn((n,), dtype=torch.float64) * LOGNORMAL_P_STD + LOGNORMAL_P_MEAN
    t = torch.searchsorted(mids, draw)
    uniform = torch.rand((n,), dtype=torch.float64) < LOGNORMAL_UNIFORM_SHARE
    t = torch.where(uniform, torch.randint(0, s.T, (n,)), t)
    return t.to(device)


def loss_weight(
    s: Schedule, parameterization: str, t: torch.Tensor, min_snr_gamma: float | None, floor: float = 0.0
) -> torch.Tensor:
    """Per-sample weight [B] on the MSE against `training_target`.

    None gives plain MSE (weight 1, the seed's loss). A number γ gives Min-SNR-γ (Hang et al. 2023):
    the effective x0-space weight min(SNR, γ), expressed for each parameterization. For v and x0 that
    weight falls to 0 with the SNR (exactly 0 at a zero-terminal-SNR schedule's t = T-1, where every
    trailing sampling chain starts); `floor` is the least weight on the noisy side (SNR < 1), where
    Min-SNR's weight only rises with the SNR, so it keeps the noisiest timesteps in training (0: Hang et
    al.'s weight as published; plain MSE's 1 is above any floor in [0, 1]).
    """
    p = lookup_parameterization(parameterization)
    if min_snr_gamma is None:
        return torch.ones(t.shape, dtype=torch.float32, device=t.device)
    if min_snr_gamma <= 0:
        raise DtoolsError(f"--min-snr-gamma must be positive, got {min_snr_gamma}")
    if not 0 <= floor <= 1:
        raise DtoolsError(f"--min-snr-floor must lie in [0, 1], got {floor}")
    snr = s.snr().to(t.device)[t]
    w = p.min_snr(torch.clamp(snr, max=min_snr_gamma), snr)
    return torch.where(snr < 1, w.clamp_min(floor), w).float()


def _linspace(T: int, steps: int) -> np.ndarray:
    return np.round(np.linspace(0, T - 1, steps)).astype(np.int64)


def _leading(T: int, steps: int) -> np.ndarray:
    return np.arange(steps, dtype=np.int64) * (T // steps)


def _trailing(T: int, steps: int) -> np.ndarray:
    # T - k·T/steps for k < steps; np.arange(T, 0, -T/steps) would sometimes add a spurious ~0 value
    return np.round(T - np.arange(steps) * (T / steps)).astype(np.int64)[::-1] - 1


SPACING: dict[str, Callable[[int, int], np.ndarray]] = {
    "linspace": _linspace, "leading": _leading, "trailing": _trailing,
}
SPACINGS = tuple(SPACING)


def spaced_timesteps(T: int, steps: int, spacing: str = "trailing") -> np.ndarray:
    """Choose `steps` of the T timestep indices (0-based, ascending) for a fast sampler.

    - linspace: round(linspace(0, T-1, steps)), includes both ends;
    - leading:  0, k, 2k, ... with k = T // steps (DDIM's original; never reaches T-1);
    - trailing: T-1, T-1-k, ... down (Lin et al. 2023 recommend it: always starts at t = T-1).
    """
    if not 1 <= steps <= T:
        raise DtoolsError(f"--steps must lie in [1, {T}], got {steps}")
    if spacing not in SPACING:
        raise DtoolsError(f"unknown spacing {spacing!r}; choose one of {SPACINGS}")
    ts = np.unique(SPACING[spacing](T, steps))
    assert ts.shape[0] == steps and ts[0] >= 0 and ts[-1] <= T - 1, (T, steps, spacing, ts)
    return ts


def respace(betas: np.ndarray, timesteps: np.ndarray) -> np.ndarray:
    """Betas of the sub-chain that visits only `timesteps` (improved-diffusion's respacing).

    For kept indices t_1 < ... < t_K: β'_k = 1 - ᾱ_{t_k} / ᾱ_{t_{k-1}} (with ᾱ before t_1 taken as 1),
    so ᾱ'_k = ᾱ_{t_k} exactly and the network, called with the original index t_k, never knows.
    """
    ab = alphas_cumprod(betas)[np.asarray(timesteps)]
    ab_prev = np.concatenate([[1.0], ab[:-1]])
    return 1.0 - ab / ab_prev
