"""DDIM inversion and spherical interpolation, as pure functions on tensors.

- Inversion (Song et al. 2021, sec. 4.3; Dhariwal & Nichol 2021, app. F): the deterministic DDIM path
  (η = 0) is an Euler discretisation of the probability-flow ODE, so it can be run forward, from an
  image x0 up the chain to x_T. Step k (ᾱ_{k-1} -> ᾱ_k) takes ε̂ where the step starts (x_{t_{k-1}}, and
  the clean image itself, called at t_0, on the first step) and moves along it:
  x_k = √ᾱ_k x̂0 + √(1-ᾱ_k) ε̂, x̂0 = (x_{k-1} - √(1-ᾱ_{k-1}) ε̂)/√ᾱ_{k-1}. DDIM decoding takes ε̂ at the
  other end of each step, so the round trip is exact only as the step shrinks; `refine` fixed-point
  iterations re-evaluate ε̂ at the new x_k and t_k, which makes each step the exact inverse of DDIM's
  where they converge (one more network call per step each).
- Interpolation: x_T of two images (inverted) or two seeds, walked along the great circle between them
  (`slerp`, Shoemake 1985; as in DDIM's sec. 5.3): a Gaussian x_T of D dimensions has norm ≈ √D, which
  the straight line between two of them loses (to ≈ √(D/2) midway, a washed-out image).
"""

from __future__ import annotations

import math

import torch

from dtools.diffusion import Schedule
from dtools.samplers.chain import Callback, Chain, Denoiser, ModelFn


def ddim_invert(denoise: Denoiser, x0: torch.Tensor, chain: Chain, callback: Callback | None = None, *,
                refine: int = 0) -> torch.Tensor:
    """x_T (B, C, H, W) float64 of the images x0 (B, C, H, W) in [-1, 1]: DDIM (η = 0) run forward up
    `chain` (see the module's doc); `callback` hears of every step as a sampler's does."""
    x = x0.to(torch.float64)
    for k in range(len(chain)):
        ab, ab_prev = float(chain.alphas_cumprod[k]), chain.alpha_cumprod_prev(k)
        x0_hat, eps = denoise(x, int(chain.timesteps[max(k - 1, 0)]))
        chain.report(callback, k, k, x, x0_hat)
        x_next = _step(x, eps, ab_prev, ab)
        for _ in range(refine):
            _, eps = denoise(x_next, int(chain.timesteps[k]))
            x_next = _step(x, eps, ab_prev, ab)
        x = x_next
    return x


def _step(x: torch.Tensor, eps: torch.Tensor, ab_from: float, ab_to: float) -> torch.Tensor:
    """The DDIM move along ε from noise level ᾱ_from to ᾱ_to (either way)."""
    x0 = (x - math.sqrt(1.0 - ab_from) * eps) / math.sqrt(ab_from)
    return math.sqrt(ab_to) * x0 + math.sqrt(1.0 - ab_to) * eps


def invert(
    model_fn: ModelFn,
    schedule: Schedule,
    parameterization: str,
    images: torch.Tensor,
    *,
    steps: int,
    spacing: str = "trailing",
    clip_x0: bool = True,
    cond: torch.Tensor | None = None,
    refine: int = 0,
    callback: Callback | None = None,
) -> torch.Tensor:
    """The x_T (N, C, H, W) float64 of `images` (N, C, H, W) in [-1, 1] along the chain of `steps`
    timesteps (`spacing`), which `generate(..., sampler="ddim", eta=0, x_T=...)` with the same chain
    decodes back; on the images' device."""
    chain = Chain.make(schedule.betas.cpu().numpy(), steps, spacing)
    denoise = Denoiser(model_fn, schedule.to(images.device), parameterization, clip_x0, cond)
    with torch.no_grad():
        return ddim_invert(denoise, images, chain, callback, refine=refine)


def slerp(a: torch.Tensor, b: torch.Tensor, w: float) -> torch.Tensor:
    """The point a fraction w in [0, 1] along the great circle from a to b (B, ...), per item: a at 0
    and b at 1 exactly; the straight line where a and b (nearly) point the same way."""
    if w == 0.0:
        return a.clone()
    if w == 1.0:
        return b.clone()
    af, bf = a.flatten(1).to(torch.float64), b.flatten(1).to(torch.float64)  # (B, D)
    cos = (af * bf).sum(1) / (af.norm(dim=1) * bf.norm(dim=1)).clamp_min(1e-300)
    theta = torch.arccos(cos.clamp(-1.0, 1.0))  # (B,)
    sin = torch.sin(theta)
    straight = sin < 1e-6
    safe = torch.where(straight, torch.ones_like(sin), sin)
    wa = torch.where(straight, torch.full_like(sin, 1.0 - w), torch.sin((1.0 - w) * theta) / safe)
    wb = torch.where(straight, torch.full_like(sin, w), torch.sin(w * theta) / safe)
    shape = (-1,) + (1,) * (a.dim() - 1)
    return (wa.view(shape) * a.to(torch.float64) + wb.view(shape) * b.to(torch.float64)).to(a.dtype)


def frames(a: torch.Tensor, b: torch.Tensor, n: int) -> torch.Tensor:
    """n >= 2 evenly spaced points of `slerp` from a to b, each (1, ...): (n, ...), a first, b last."""
    assert n >= 2 and a.shape[0] == b.shape[0] == 1, (n, a.shape, b.shape)
    return torch.cat([slerp(a, b, i / (n - 1)) for i in range(n)])
