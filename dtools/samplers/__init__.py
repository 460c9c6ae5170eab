"""Samplers: walk a trained denoiser from pure noise x_T to an image x0, as pure functions.

Every sampler has one signature,

    sampler(denoise: Denoiser, x: (B, C, H, W) float64 x_T, chain: Chain, noise: NoiseFn,
            callback=None, *, its options) -> (B, C, H, W) float64 x0

and visits the timesteps of `chain` (a subset of 0..T-1 chosen by `dtools.diffusion.spaced_timesteps`)
from the largest down, then takes a last step from the smallest kept timestep to x0 itself. Each
lives in a module of its own; its spec (name, help, network calls, default steps, options) is a line
of dtools.sampler_specs.SAMPLERS:

- `ddpm`     ancestral sampling (Ho et al. 2020, Alg. 2) with Σ = β_t or β̃_t (`ddpm.py`).
- `ddim`     Song et al. 2021, eq. 12, with η (0 = deterministic; 1 = `ddpm --variance posterior`).
- `dpm++2m`  DPM-Solver++(2M), Lu et al. 2022, Alg. 2: data prediction, multistep in λ = log(α/σ).
- `heun`     Karras et al. 2022, Alg. 1 without churn: second order on the probability-flow ODE
             dx̂/dσ̂ = ε̂ in x̂ = x/α, σ̂ = σ/α; two network calls per step (2·steps - 2 in all).

The rest of the package: `chain.py` (the `Chain` of timesteps and the `Denoiser`, the network with
its optional condition and guidance), `guidance.py` (classifier-free guidance and autoguidance,
D + w (D − D_weak), with its σ interval), `seeds.py` (one noise generator per image), `generation.py`
(`sample`, `generate`, `generate_from_prior` for a model without a chain, `network_calls`, and the
option checks), `editing.py` (SDEdit and inpainting: a chain entered part-way, and `Inpaint`, the
Denoiser's constraint that every sampler applies at the top of its step), `inversion.py` (DDIM run
forward from an image to its x_T, and `slerp` between two x_T).

Schedule math is float64 (the sampler state too); the network sees float32. A zero-terminal-SNR
schedule (ᾱ = 0 at t = T-1, so λ = -∞, σ̂ = ∞) is handled by taking the first step in closed form.

Reproducibility: image i draws its x_T and every later noise from its own CPU `torch.Generator`
seeded with `seeds[i]` (`image_seed(seed, i)` in `dtools sample`), so an image depends only on
its seed, never on the batch it was drawn in or on the device.
"""

from dtools.sampler_specs import DEFAULT_SAMPLER, SAMPLERS, SamplerSpec
from dtools.samplers.chain import Callback, Chain, Constraint, Denoiser, ModelFn
from dtools.samplers.generation import check_options, generate, generate_from_prior, network_calls, sample
from dtools.samplers.guidance import Guidance, parse_interval
from dtools.samplers.seeds import ImageNoise, NoiseFn, image_seed

__all__ = [
    "DEFAULT_SAMPLER", "SAMPLERS", "Callback", "Chain", "Constraint", "Denoiser", "Guidance", "ImageNoise",
    "ModelFn", "NoiseFn", "SamplerSpec", "check_options", "generate", "generate_from_prior", "image_seed",
    "network_calls", "parse_interval", "sample",
]
