"""Samplers: walk a trained denoiser from pure noise x_T to an image x0, as pure functions.

Every sampler has one signature,

    sampler(denoise: Denoiser, x: (B, C, H, W) float64 x_T, chain: Chain, noise: NoiseFn,
            opts: SamplerOptions, callback) -> (B, C, H, W) float64 x0

and visits the timesteps of `chain` (a subset of 0..T-1 chosen by `dtools.diffusion.spaced_timesteps`)
from the largest down, then takes a last step from the smallest kept timestep to x0 itself. The
previous timestep of t_k is always the previous element t_{k-1} of the chosen subset (diffusers'
DDIM gets this wrong for non-leading spacings: its issues 12633 and 11347). The network is called
with the ORIGINAL timestep index; only the schedule is respaced (improved-diffusion's method).

- `ddpm`     ancestral sampling (Ho et al. 2020, Alg. 2) with Σ = β_t or β̃_t; at steps < T it runs on
             the respaced chain β'_k = 1 - ᾱ_{t_k}/ᾱ_{t_{k-1}}.
- `ddim`     Song et al. 2021, eq. 12, with η (0 = deterministic; 1 = `ddpm --variance posterior`).
- `dpm++2m`  DPM-Solver++(2M), Lu et al. 2022, Alg. 2: data prediction, multistep in λ = log(α/σ).
- `heun`     Karras et al. 2022, Alg. 1 without churn: second order on the probability-flow ODE
             dx̂/dσ̂ = ε̂ in x̂ = x/α, σ̂ = σ/α; two network calls per step (2·steps - 2 in all).

Schedule math is float64 (the sampler state too); the network sees float32. A zero-terminal-SNR
schedule (ᾱ = 0 at t = T-1, so λ = -∞, σ̂ = ∞) is handled by taking the first step in closed form.

`generate_from_prior` is the one-call "sampler" of a model without a chain (a GAN's generator, a VAE's
decoder): z ~ N(0, I) per image, decoded.

Reproducibility: image i draws its x_T and every later noise from its own CPU `torch.Generator`
seeded with `seeds[i]` (`image_seed(seed, i)` in `dtools sample`), so an image depends only on
its seed, never on the batch it was drawn in or on the device.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from dtools.diffusion import (
    SPACINGS,
    VARIANCES,
    Schedule,
    alphas_cumprod,
    lookup_parameterization,
    q_posterior,
    respace,
    reverse_variance,
    spaced_timesteps,
    split_prediction,
)
from dtools.errors import DtoolsError, OptionError

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t (B,C,H,W) f32, t (B,) int64) -> out
NoiseFn = Callable[[], torch.Tensor]  # a fresh N(0, I) draw of the batch's shape, float64
Callback = Callable[[dict], None]


def image_seed(seed: int, i: int) -> int:
    """The seed of image i under `dtools sample --seed SEED`: a 63-bit hash of (seed, i).

    Hashing (rather than seed + i) keeps the images of --seed 0 and --seed 1 unrelated.
    """
    digest = hashlib.blake2b(f"dtools.image:{int(seed)}:{int(i)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class ImageNoise:
    """Standard normal noise for a batch in which image i draws only from its own generator.

    Each draw is made on the CPU in float32 (the same numbers on every machine), then moved to the
    device as float64.
    """

    def __init__(self, seeds: Sequence[int], shape: tuple[int, ...], device: torch.device | str = "cpu"):
        self.generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        self.shape = tuple(shape)
        self.device = torch.device(device)

    def __call__(self) -> torch.Tensor:
        z = torch.stack([torch.randn(self.shape, generator=g) for g in self.generators])  # (B, C, H, W)
        return z.to(self.device, torch.float64)


@dataclass(frozen=True)
class Denoiser:
    """The network seen by a sampler: (x_t, t) -> (x0_hat, eps_hat), float64.

    With `clip_x0`, x0_hat is clamped to [-1, 1] and eps_hat recomputed from it, so that every
    sampler's update stays consistent with the clipped prediction (as improved-diffusion does).
    """

    model_fn: ModelFn
    schedule: Schedule  # the full, original schedule (float64) on the sampling device
    parameterization: str
    clip_x0: bool = True

    def __call__(self, x: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        tt = torch.full((x.shape[0],), int(t), dtype=torch.int64, device=x.device)  # (B,)
        out = self.model_fn(x.float(), tt)  # (B, C, H, W)
        x0, eps = split_prediction(self.schedule, self.parameterization, out, x, tt)
        if self.clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
            ab = float(self._alphas_cumprod[int(t)])
            eps = (x - math.sqrt(ab) * x0) / math.sqrt(1.0 - ab)
        return x0, eps

    @cached_property
    def _alphas_cumprod(self) -> np.ndarray:  # on the CPU: reading it costs no device sync
        return self.schedule.alphas_cumprod.cpu().numpy()


@dataclass(frozen=True)
class Chain:
    """The timesteps a sampler visits: t_{K-1} > ... > t_0 (original indices), then x0 (ᾱ = 1).

    `alphas_cumprod[k]` is ᾱ_{t_k} of the original schedule, and `betas` the respaced β'_k with
    cumprod(1 - β') = ᾱ_{t_k}; `alpha_cumprod_prev(0)` is 1, the clean image.
    """

    timesteps: np.ndarray  # int64 [K], ascending
    alphas_cumprod: np.ndarray  # float64 [K]
    betas: np.ndarray  # float64 [K]

    @classmethod
    def make(cls, betas: np.ndarray, steps: int, spacing: str = "trailing") -> Chain:
        T = int(np.asarray(betas).shape[0])
        if not 2 <= steps <= T:
            raise OptionError("--steps", f"must lie in [2, {T}] for this {T}-step schedule, got {steps}")
        ts = spaced_timesteps(T, steps, spacing)
        return cls(ts, alphas_cumprod(betas)[ts], respace(betas, ts))

    def __len__(self) -> int:
        return int(self.timesteps.shape[0])

    def alpha_cumprod_prev(self, k: int) -> float:
        return 1.0 if k == 0 else float(self.alphas_cumprod[k - 1])


@dataclass(frozen=True)
class SamplerOptions:
    eta: float = 0.0  # ddim: scale of the fresh noise (0 = deterministic)
    variance: str = "posterior"  # ddpm: Σ = β_t ("beta") or β̃_t ("posterior")


SamplerFn = Callable[[Denoiser, torch.Tensor, Chain, NoiseFn, SamplerOptions, Callback | None], torch.Tensor]


def _report(callback: Callback | None, i: int, chain: Chain, k: int, x: torch.Tensor, x0: torch.Tensor):
    if callback is not None:
        callback({"step": i, "steps": len(chain), "t": int(chain.timesteps[k]), "x": x, "x0_hat": x0})


def ddpm(denoise: Denoiser, x: torch.Tensor, chain: Chain, noise: NoiseFn, opts: SamplerOptions,
         callback: Callback | None = None) -> torch.Tensor:
    """Ancestral sampling (Ho et al. 2020): x_{t-1} = μ̃(x_t, x0_hat) + sqrt(Σ_t) z, Σ_t = β_t or β̃_t."""
    respaced = Schedule.from_betas(chain.betas).to(x.device)  # index k here is original t_k
    for i, k in enumerate(reversed(range(len(chain)))):
        x0, _ = denoise(x, int(chain.timesteps[k]))
        _report(callback, i, chain, k, x, x0)
        kk = torch.full((x.shape[0],), k, dtype=torch.int64, device=x.device)
        mean, _ = q_posterior(respaced, x0, x, kk)
        if k > 0:  # no noise on the last step, which lands on x0 (Σ = β̃ would be 0 there anyway)
            x = mean + reverse_variance(respaced, opts.variance, kk, x).sqrt() * noise()
        else:
            x = mean
    return x


def ddim(denoise: Denoiser, x: torch.Tensor, chain: Chain, noise: NoiseFn, opts: SamplerOptions,
         callback: Callback | None = None) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12): x_prev = sqrt(ᾱ_prev) x0_hat + sqrt(1-ᾱ_prev-σ²) ε̂ + σ z,
    σ = η sqrt((1-ᾱ_prev)/(1-ᾱ_t)) sqrt(1-ᾱ_t/ᾱ_prev)."""
    for i, k in enumerate(reversed(range(len(chain)))):
        x0, eps = denoise(x, int(chain.timesteps[k]))
        _report(callback, i, chain, k, x, x0)
        ab, ab_prev = float(chain.alphas_cumprod[k]), chain.alpha_cumprod_prev(k)
        sigma = opts.eta * math.sqrt((1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev))
        x = math.sqrt(ab_prev) * x0 + math.sqrt(max(1.0 - ab_prev - sigma**2, 0.0)) * eps
        if sigma > 0:
            x = x + sigma * noise()
    return x


MAX_STEP_RATIO = 2.0  # dpm++2m steps longer than this many times the previous one are first order


def dpmpp_2m(denoise: Denoiser, x: torch.Tensor, chain: Chain, noise: NoiseFn, opts: SamplerOptions,
             callback: Callback | None = None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2): x_next = (σ_n/σ) x + α_n (1 - e^{-h}) D with
    h = λ_n - λ, D = (1 + r) x0_hat - r x0_hat_prev, r = h / (2 h_prev); first order on the first
    step, on a step over MAX_STEP_RATIO times longer than the previous one, and on the last one, which
    lands on x0 (λ = ∞)."""
    x0_prev, h_prev = None, math.inf
    for i, k in enumerate(reversed(range(len(chain)))):
        x0, _ = denoise(x, int(chain.timesteps[k]))
        _report(callback, i, chain, k, x, x0)
        if k == 0:
            return x0
        ab, ab_next = float(chain.alphas_cumprod[k]), chain.alpha_cumprod_prev(k)
        alpha, sigma = math.sqrt(ab), math.sqrt(1.0 - ab)
        alpha_n, sigma_n = math.sqrt(ab_next), math.sqrt(1.0 - ab_next)
        exp_neg_h = alpha * sigma_n / (sigma * alpha_n)  # e^{-h}; 0 when ᾱ = 0 (λ = -∞)
        h = -math.log(exp_neg_h) if exp_neg_h > 0 else math.inf
        r = h / (2.0 * h_prev)  # 0 on the first step and after a step from λ = -∞
        # A step much longer than the one before it (the last step of a linspace or leading chain, 3.6-4.9x
        # longer) extrapolates x0_hat far beyond where it was measured: take it first order, as the
        # DPM-Solver reference code does for its final steps.
        second_order = x0_prev is not None and 0 < r <= MAX_STEP_RATIO / 2
        d = (1.0 + r) * x0 - r * x0_prev if second_order else x0
        x = (sigma_n / sigma) * x + alpha_n * (1.0 - exp_neg_h) * d
        x0_prev, h_prev = x0, h
    raise AssertionError("unreachable: the chain ends at k = 0")


def heun(denoise: Denoiser, x: torch.Tensor, chain: Chain, noise: NoiseFn, opts: SamplerOptions,
         callback: Callback | None = None) -> torch.Tensor:
    """Heun's method on the probability-flow ODE (Karras et al. 2022, Alg. 1, no churn): in x̂ = x/α
    and σ̂ = σ/α the ODE is dx̂/dσ̂ = ε̂; each Euler step (= a DDIM step) is corrected with the slope
    at its end. The first step, from σ̂ = 10²..10⁴ (∞ at zero terminal SNR), stays Euler: there
    ε̂ ≈ x_T is nearly constant, while the trapezoid rule over that huge interval is unstable."""
    for i, k in enumerate(reversed(range(len(chain)))):
        x0, eps = denoise(x, int(chain.timesteps[k]))
        _report(callback, i, chain, k, x, x0)
        if k == 0:
            return x0
        ab, ab_next = float(chain.alphas_cumprod[k]), chain.alpha_cumprod_prev(k)
        alpha_n, sigma_n = math.sqrt(ab_next), math.sqrt(1.0 - ab_next)
        x_euler = alpha_n * x0 + sigma_n * eps  # α_n (x̂ + (σ̂_n - σ̂) ε̂)
        if i == 0:
            x = x_euler
            continue
        alpha, sigma = math.sqrt(ab), math.sqrt(1.0 - ab)
        _, eps_n = denoise(x_euler, int(chain.timesteps[k - 1]))
        x_hat = x / alpha + (sigma_n / alpha_n - sigma / alpha) * 0.5 * (eps + eps_n)
        x = alpha_n * x_hat
    raise AssertionError("unreachable: the chain ends at k = 0")


SAMPLERS: dict[str, SamplerFn] = {
    "ddpm": ddpm,
    "ddim": ddim,
    "dpm++2m": dpmpp_2m,
    "heun": heun,
}

# Network calls per image for `steps` kept timesteps.
NFE: dict[str, Callable[[int], int]] = {
    "ddpm": lambda steps: steps,
    "ddim": lambda steps: steps,
    "dpm++2m": lambda steps: steps,
    "heun": lambda steps: 2 * steps - 2,
}


def check_sampler(sampler: str) -> None:
    if sampler not in SAMPLERS:
        raise OptionError("--sampler", f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")


def check_options(sampler: str, parameterization: str, spacing: str, eta: float, variance: str) -> None:
    """Raise a one-line DtoolsError for a bad sampler name or option value."""
    check_sampler(sampler)
    lookup_parameterization(parameterization)
    if spacing not in SPACINGS:
        raise OptionError("--spacing", f"unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    if variance not in VARIANCES:
        choices = ", ".join(VARIANCES)
        raise OptionError("--variance", f"unknown variance {variance!r}; choose one of {choices}")
    if not (isinstance(eta, int | float) and 0.0 <= eta <= 1.0):
        raise OptionError("--eta", f"must lie in [0, 1], got {eta}")


def sample(
    model_fn: ModelFn,
    schedule: Schedule,
    parameterization: str,
    x_T: torch.Tensor,
    noise: NoiseFn,
    *,
    sampler: str = "dpm++2m",
    steps: int = 20,
    spacing: str = "trailing",
    eta: float = 0.0,
    variance: str = "posterior",
    clip_x0: bool = True,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Run one sampler from a given x_T (B, C, H, W); returns x0 as float64, not clamped.

    The building block under `generate`; tests call it to see the raw output of the math.
    """
    check_options(sampler, parameterization, spacing, eta, variance)
    chain = Chain.make(schedule.betas.cpu().numpy(), steps, spacing)
    denoise = Denoiser(model_fn, schedule.to(x_T.device), parameterization, clip_x0)
    opts = SamplerOptions(eta=float(eta), variance=variance)
    with torch.no_grad():
        return SAMPLERS[sampler](denoise, x_T.to(torch.float64), chain, noise, opts, callback)


def generate(
    model_fn: ModelFn,
    schedule: Schedule,
    parameterization: str,
    shape: tuple[int, int, int],
    seeds: Sequence[int],
    *,
    sampler: str = "dpm++2m",
    steps: int = 20,
    spacing: str = "trailing",
    eta: float = 0.0,
    variance: str = "posterior",
    device: torch.device | str = "cpu",
    clip_x0: bool = True,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Draw len(seeds) images of `shape` (C, H, W): (N, C, H, W) float32 in [-1, 1].

    Image i starts from, and draws all its noise from, a generator seeded with seeds[i], so it is
    the same whether it is generated alone or in any batch. `model_fn(x_t, t)` is called with
    x_t (B, C, H, W) float32 and t (B,) int64, the original timestep index.
    """
    if len(seeds) == 0:
        raise DtoolsError("no images to generate (an empty list of seeds)")
    if len(shape) != 3 or any(int(n) < 1 for n in shape):
        raise DtoolsError(f"image shape must be (C, H, W) with positive sizes, got {tuple(shape)}")
    device = torch.device(device)
    if device.type == "mps":  # no float64 on Apple GPUs: the sampler's math stays on the CPU
        net = model_fn
        model_fn = lambda x, t: net(x.to(device), t.to(device)).to("cpu")  # noqa: E731
        device = torch.device("cpu")
    noise = ImageNoise(seeds, tuple(int(n) for n in shape), device)
    x = sample(
        model_fn, schedule, parameterization, noise(), noise, sampler=sampler, steps=steps, spacing=spacing,
        eta=eta, variance=variance, clip_x0=clip_x0, callback=callback,
    )
    if not torch.isfinite(x).all():
        raise DtoolsError("sampling produced NaN or infinite values: the model's output is not finite "
                          "(a diverged checkpoint?)")
    return x.clamp(-1.0, 1.0).float()


def generate_from_prior(
    decode: Callable[[torch.Tensor], torch.Tensor],
    latent_dim: int,
    seeds: Sequence[int],
    *,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Images of a latent-variable model (a GAN's generator, a VAE's decoder): (N, C, H, W) float32 in
    [-1, 1], one `decode` call for the batch.

    Image i decodes z_i ~ N(0, I) of `latent_dim`, the first draw of its own generator seeded with
    seeds[i] (as a diffusion model's x_T), so it depends only on its seed, never on the batch.
    """
    if len(seeds) == 0:
        raise DtoolsError("no images to generate (an empty list of seeds)")
    z = ImageNoise(seeds, (int(latent_dim),))().float().to(device)  # (B, latent_dim), float32 (for MPS too)
    with torch.no_grad():
        x = decode(z).float()
    if not torch.isfinite(x).all():
        raise DtoolsError("sampling produced NaN or infinite values: the model's output is not finite "
                          "(a diverged checkpoint?)")
    return x.clamp(-1.0, 1.0)
