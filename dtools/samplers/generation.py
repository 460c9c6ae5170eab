"""Running a sampler: `sample` from a given x_T, `generate` a batch of seeded images, and
`generate_from_prior` for a model without a chain; `check_options`, the checks of their options.

The sampler is looked up in dtools.sampler_specs.SAMPLERS: its spec says which options its function
takes (`eta`, `variance`), their defaults, and its default number of steps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch

from dtools.diffusion import SPACINGS, VARIANCES, Schedule, lookup_parameterization
from dtools.errors import DtoolsError, OptionError
from dtools.sampler_specs import DEFAULT_SAMPLER, SamplerSpec, lookup
from dtools.samplers.chain import Callback, Chain, Constraint, Denoiser, ModelFn
from dtools.samplers.guidance import Guidance
from dtools.samplers.seeds import ImageNoise, NoiseFn


def check_options(sampler: str, parameterization: str, spacing: str = "trailing", *,
                  eta: float | None = None, variance: str | None = None) -> SamplerSpec:
    """The sampler's spec; a one-line DtoolsError for a bad sampler name or option value (an option
    left None is the sampler's default)."""
    spec = lookup(sampler)
    lookup_parameterization(parameterization)
    if spacing not in SPACINGS:
        raise OptionError("--spacing", f"unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    if variance is not None and variance not in VARIANCES:
        choices = ", ".join(VARIANCES)
        raise OptionError("--variance", f"unknown variance {variance!r}; choose one of {choices}")
    if eta is not None and not (isinstance(eta, int | float) and 0.0 <= eta <= 1.0):
        raise OptionError("--eta", f"must lie in [0, 1], got {eta}")
    return spec


def sample(
    model_fn: ModelFn,
    schedule: Schedule,
    parameterization: str,
    x_T: torch.Tensor,
    noise: NoiseFn,
    *,
    sampler: str = DEFAULT_SAMPLER,
    steps: int | None = None,
    spacing: str = "trailing",
    eta: float | None = None,
    variance: str | None = None,
    clip_x0: bool = True,
    cond: torch.Tensor | None = None,
    guidance: Guidance | None = None,
    callback: Callback | None = None,
    start: int | None = None,
    constraint: Constraint | None = None,
) -> torch.Tensor:
    """Run one sampler from a given x_T (B, C, H, W); returns x0 as float64, not clamped.

    `steps` None: the sampler's default; `eta`, `variance` None: its defaults (an option it does not
    take is checked, then left out). The building block under `generate`; tests call it to see the
    raw output of the math. `start` k: run only the sub-chain from its k-th timestep t_k down
    (`Chain.truncate`; x_T is then x at t_k, as SDEdit starts); `constraint`: the Denoiser's
    (inpainting's known region).
    """
    spec = check_options(sampler, parameterization, spacing, eta=eta, variance=variance)
    betas = schedule.betas.cpu().numpy()
    chain = Chain.make(betas, spec.steps_for(len(betas)) if steps is None else steps, spacing)
    if start is not None:
        chain = chain.truncate(start)
    denoise = Denoiser(model_fn, schedule.to(x_T.device), parameterization, clip_x0, cond, guidance,
                       constraint)
    options = spec.arguments({"eta": None if eta is None else float(eta), "variance": variance})
    with torch.no_grad():
        return spec.load()(denoise, x_T.to(torch.float64), chain, noise, callback, **options)


def generate(
    model_fn: ModelFn,
    schedule: Schedule,
    parameterization: str,
    shape: tuple[int, int, int],
    seeds: Sequence[int],
    *,
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
    x_T: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draw len(seeds) images of `shape` (C, H, W): (N, C, H, W) float32 in [-1, 1].

    Image i starts from, and draws all its noise from, a generator seeded with seeds[i], so it is
    the same whether it is generated alone or in any batch. `model_fn(x_t, t)` is called with
    x_t (B, C, H, W) float32 and t (B,) int64, the original timestep index; with a condition `cond`
    (e.g. the batch's class labels (B,), on the network's device) every call is
    `model_fn(x_t, t, cond)`. `guidance` (dtools.samplers.guidance) guides every sampler's calls.
    A given `x_T` (N, C, H, W) (`dtools invert`'s latents) is the start instead of the seeds' first
    draws; the seeds still give any later noise.
    """
    if len(seeds) == 0:
        raise DtoolsError("no images to generate (an empty list of seeds)")
    if len(shape) != 3 or any(int(n) < 1 for n in shape):
        raise DtoolsError(f"image shape must be (C, H, W) with positive sizes, got {tuple(shape)}")
    device, model_fn, guidance = placed(device, model_fn, guidance)
    noise = ImageNoise(seeds, tuple(int(n) for n in shape), device)
    start = noise() if x_T is None else x_T.to(device, torch.float64)
    x = sample(
        model_fn, schedule, parameterization, start, noise, sampler=sampler, steps=steps, spacing=spacing,
        eta=eta, variance=variance, clip_x0=clip_x0, cond=cond, guidance=guidance, callback=callback,
    )
    return finite_images(x)


def placed(device: torch.device | str, model_fn: ModelFn,
           guidance: Guidance | None) -> tuple[torch.device, ModelFn, Guidance | None]:
    """Where the sampler's math runs and the network calls it makes there: on an Apple GPU (no
    float64) the math stays on the CPU and the networks are called on the GPU."""
    device = torch.device(device)
    if device.type == "mps":
        model_fn = _on(device, model_fn)
        if guidance is not None:
            guidance = dataclasses.replace(guidance, weak_fn=_on(device, guidance.weak_fn))
        device = torch.device("cpu")
    return device, model_fn, guidance


def _on(device: torch.device, net: ModelFn) -> ModelFn:
    """`net` called on `device` with the CPU tensors of the sampler, its output back on the CPU."""
    return lambda x, t, *cond: net(x.to(device), t.to(device), *cond).to("cpu")


def network_calls(sampler: str, steps: int, betas, spacing: str = "trailing",
                  guidance: Guidance | None = None, *, start: int | None = None,
                  resample: int = 0) -> tuple[int, int]:
    """(network calls per image, of them the weak denoiser's) of a sampler's chain with `guidance`:
    the sampler run once on a 1-pixel stand-in that records the timestep of each call. `start`: the
    sub-chain from t_start down (SDEdit); `resample`: the extra calls of RePaint's resampling at each
    step (dtools.samplers.editing.Inpaint)."""
    spec = lookup(sampler)
    chain = Chain.make(betas, steps, spacing)
    chain = chain if start is None else chain.truncate(start)
    ab = {int(t): float(a) for t, a in zip(chain.timesteps, chain.alphas_cumprod, strict=True)}
    calls: list[int] = []

    class Count:
        def __call__(self, x: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
            calls.append(int(t))
            return torch.zeros_like(x), torch.zeros_like(x)

        def constrain(self, x: torch.Tensor, chain: Chain, k: int) -> torch.Tensor:
            calls.extend([int(chain.timesteps[k])] * resample)
            return x

    options = spec.arguments({"eta": None, "variance": None})
    zeros = lambda: torch.zeros((1, 1, 1, 1), dtype=torch.float64)  # noqa: E731
    spec.load()(Count(), zeros(), chain, zeros, None, **options)
    weak = sum(1 for t in calls if guidance is not None and guidance.applies(ab.get(t, 0.0)))
    return len(calls) + weak, weak


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
    return finite_images(x)


def finite_images(x: torch.Tensor) -> torch.Tensor:
    """A sampler's output (N, C, H, W) as float32 images in [-1, 1]; an error if any value is not finite."""
    if not torch.isfinite(x).all():
        raise DtoolsError("sampling produced NaN or infinite values: the model's output is not finite "
                          "(a diverged checkpoint?)")
    return x.clamp(-1.0, 1.0).float()
