"""Editing images with a trained denoiser, as pure functions on tensors: SDEdit and inpainting.

- SDEdit (Meng et al. 2022): noise each input to a level S, x_t = √ᾱ_t x0 + √(1-ᾱ_t) ε at the
  timestep t_S of the sampler's chain nearest S·T, then denoise it with any sampler along the
  sub-chain of timesteps <= t_S (`Chain.truncate`). S = 0 is the input itself, S = 1 pure noise: the
  whole chain from x_T = ε, which is `generate` with the same seeds, to the bit.
- Inpainting by replacement: at every step the known region of x_t (where the mask keeps the input) is
  replaced by the input noised to that t, q_sample(x0, t, ε') with fresh ε', so that the network sees
  the kept pixels at the right noise level and fills in the rest to match (`Inpaint`, the Denoiser's
  constraint). RePaint's resampling (Lugmayr et al. 2022, Alg. 1 with jumps of one step): before the
  sampler's own step, R times take an ancestral step down to t_{k-1}, paste the known region there,
  and noise the result back up to t_k with q(x_{t_k} | x_{t_{k-1}}), so that the generated part
  harmonises with the kept one; R more network calls per step.

Image i draws every noise (its ε and the replacement noises) from its own generator (`ImageNoise`), so an
edit depends only on its seed, never on the batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dtools.diffusion import Schedule
from dtools.errors import DtoolsError, OptionError
from dtools.sampler_specs import DEFAULT_SAMPLER
from dtools.samplers.chain import Callback, Chain, Denoiser, ModelFn
from dtools.samplers.generation import check_options, finite_images, placed, sample
from dtools.samplers.guidance import Guidance
from dtools.samplers.seeds import ImageNoise, NoiseFn


def check_strength(strength: float) -> float:
    if not (isinstance(strength, int | float) and 0.0 <= strength <= 1.0):
        raise OptionError("--strength", f"must lie in [0, 1] (0 = the input unchanged, 1 = pure noise), "
                          f"got {strength}")
    return float(strength)


def start_index(chain: Chain, strength: float, T: int) -> int | None:
    """The index k of the chain timestep SDEdit starts from at `strength` S: the one nearest S·T (the
    0-based index S·T - 1; ties go to less noise). None where the clean image (index -1) is nearest:
    S = 0, or too little noise for this chain to take a step."""
    check_strength(strength)
    if strength == 0.0:
        return None
    positions = np.concatenate([[-1], chain.timesteps])  # -1: x0 itself
    j = int(np.argmin(np.abs(positions - (strength * T - 1.0))))
    return None if j == 0 else j - 1


@dataclass(frozen=True)
class Inpaint:
    """The known region of inpainting, a Denoiser constraint: it pastes the input, noised to t_k, into
    the x_t each step starts from, after R resampling rounds (see the module's doc)."""

    x0: torch.Tensor  # (B, C, H, W) float64: the input images in [-1, 1]
    keep: torch.Tensor  # (B, 1, H, W) float64: 1 where the input is kept, 0 where it is regenerated
    noise: NoiseFn
    resample: int = 0

    def paste(self, x: torch.Tensor, alpha_cumprod: float) -> torch.Tensor:
        """x with its known region replaced by q_sample(x0) at ᾱ (fresh noise; ᾱ = 1: x0 itself)."""
        eps = self.noise()
        known = math.sqrt(alpha_cumprod) * self.x0 + math.sqrt(1.0 - alpha_cumprod) * eps
        return torch.where(self.keep > 0.5, known, x)

    def __call__(self, denoise: Denoiser, x: torch.Tensor, chain: Chain, k: int) -> torch.Tensor:
        t = int(chain.timesteps[k])
        ab, ab_prev = float(chain.alphas_cumprod[k]), chain.alpha_cumprod_prev(k)
        x = self.paste(x, ab)
        beta = 1.0 - ab / ab_prev  # β' of the respaced step t_{k-1} -> t_k
        for _ in range(self.resample):
            x0, _ = denoise(x, t)
            # an ancestral step down (the posterior q(x_{k-1} | x_k, x0_hat), Σ = β̃), the known region
            # pasted at t_{k-1}, then forward again with q(x_k | x_{k-1})
            mean = (math.sqrt(ab_prev) * beta / (1.0 - ab)) * x0 \
                + (math.sqrt(1.0 - beta) * (1.0 - ab_prev) / (1.0 - ab)) * x
            var = beta * (1.0 - ab_prev) / (1.0 - ab)
            x_prev = self.paste(mean + math.sqrt(var) * self.noise(), ab_prev)
            x = self.paste(math.sqrt(1.0 - beta) * x_prev + math.sqrt(beta) * self.noise(), ab)
        return x


def edit(
    model_fn: ModelFn,
    schedule: Schedule,
    parameterization: str,
    images: torch.Tensor,
    seeds: Sequence[int],
    strength: float,
    *,
    keep: torch.Tensor | None = None,
    resample: int = 0,
    sampler: str = DEFAULT_SAMPLER,
    steps: int | None = None,
    spacing: str = "trailing",
    eta: float | None = None,
    variance: str | None = None,
    device: torch.device | str = "cpu",
    clip_x0: bool = True,
    cond: torch.Tensor | None = None,
    guidance: Guidance | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """SDEdit `images` (N, C, H, W) in [-1, 1] at `strength`, inpainting where `keep` (N, 1, H, W) is 0
    if given: (N, C, H, W) float32 in [-1, 1], the kept pixels of the input exactly.

    Image i draws its ε and all later noise from a generator seeded with seeds[i]; at strength 1
    without `keep` that is `generate(..., seeds)` exactly. The other arguments are `generate`'s.
    """
    if len(seeds) != images.shape[0]:
        raise DtoolsError(f"{images.shape[0]} images but {len(seeds)} seeds")
    if resample and keep is None:
        raise OptionError("--resample", "resamples the known region of inpainting: give --mask too")
    if resample < 0:
        raise OptionError("--resample", f"must be >= 0, got {resample}")
    spec = check_options(sampler, parameterization, spacing, eta=eta, variance=variance)
    betas = schedule.betas.cpu().numpy()
    chain = Chain.make(betas, spec.steps_for(len(betas)) if steps is None else steps, spacing)
    k = start_index(chain, strength, len(betas))
    if k is None:
        return images.float().clone()
    device, model_fn, guidance = placed(device, model_fn, guidance)
    noise = ImageNoise(seeds, tuple(images.shape[1:]), device)
    x0 = images.to(device, torch.float64)
    eps = noise()
    if strength == 1.0:  # pure noise, as `generate` starts
        x = eps
    else:
        ab = float(chain.alphas_cumprod[k])
        x = math.sqrt(ab) * x0 + math.sqrt(1.0 - ab) * eps
    constraint = None
    if keep is not None:
        keep = keep.to(device, torch.float64)
        constraint = Inpaint(x0, keep, noise, resample)
    out = sample(model_fn, schedule, parameterization, x, noise, sampler=sampler, steps=steps,
                 spacing=spacing, eta=eta, variance=variance, clip_x0=clip_x0, cond=cond, guidance=guidance,
                 callback=callback, start=k, constraint=constraint)
    out = finite_images(out)
    if keep is not None:
        out = torch.where(keep > 0.5, x0, out.to(torch.float64)).float()
    return out
