"""SDEdit, inpainting, DDIM inversion and slerp (dtools.samplers.editing, .inversion), against the
closed-form denoiser of Gaussian data (tests/test_samplers.py's oracle) and exact identities."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dtools.diffusion import Schedule
from dtools.errors import DtoolsError, OptionError
from dtools.samplers import SAMPLERS, Chain, ImageNoise, generate, network_calls, sample
from dtools.samplers.editing import Inpaint, edit, start_index
from dtools.samplers.inversion import frames, invert, slerp
from dtools.schedules import make_schedule

pytestmark = pytest.mark.usefixtures("one_thread")


def gaussian_data(shape) -> tuple[torch.Tensor, torch.Tensor]:
    """x0 ~ N(μ, σ²) per pixel, μ in [-0.5, 0.5], σ in [0.5, 1] (tests/test_samplers.py's data)."""
    g = torch.Generator().manual_seed(1234)
    mu = torch.rand(shape, generator=g, dtype=torch.float64) - 0.5
    sigma = 0.5 + 0.5 * torch.rand(shape, generator=g, dtype=torch.float64)
    return mu, sigma


def oracle(schedule: Schedule, mu: torch.Tensor, sigma: torch.Tensor):
    """The exact ε-prediction for that data: E[ε | x_t] = s (x_t - a μ) / (a²σ² + s²)."""

    def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = schedule.alphas_cumprod[t].reshape(-1, 1, 1, 1)
        a, s = ab.sqrt(), (1 - ab).sqrt()
        return (s * (x_t.double() - a * mu) / (a * a * sigma**2 + s * s)).float()

    return model_fn


T = 1000
SHAPE = (1, 16, 16)
SCHEDULE = Schedule.from_betas(make_schedule("cosine", T))
MU, SIGMA = gaussian_data(SHAPE)
MODEL = oracle(SCHEDULE, MU, SIGMA)
SEEDS = [11, 12, 13]


def images(n=3, seed=0) -> torch.Tensor:
    """Data-like inputs: n draws of the Gaussian data, clipped to [-1, 1], float32 (N, C, H, W)."""
    g = torch.Generator().manual_seed(seed)
    x = MU + SIGMA * torch.randn((n, *SHAPE), generator=g, dtype=torch.float64)
    return x.clamp(-1, 1).float()


def test_the_start_is_the_chain_timestep_nearest_strength_times_T():
    chain = Chain.make(SCHEDULE.betas.numpy(), 20, "trailing")  # 49, 99, ..., 999
    assert start_index(chain, 1.0, T) == 19 and chain.timesteps[19] == 999
    assert chain.timesteps[start_index(chain, 0.5, T)] == 499
    assert chain.timesteps[start_index(chain, 0.33, T)] == 349  # S·T - 1 = 329: 349 is nearer than 299
    assert start_index(chain, 0.0, T) is None
    assert start_index(chain, 0.02, T) is None  # 19 is nearer x0 (-1) than 49
    assert start_index(chain, 0.04, T) == 0
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(OptionError, match="--strength"):
            start_index(chain, bad, T)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_strength_one_is_sample_with_the_same_seeds(sampler):
    steps = 10
    x = images()
    edited = edit(MODEL, SCHEDULE, "eps", x, SEEDS, 1.0, sampler=sampler, steps=steps)
    drawn = generate(MODEL, SCHEDULE, "eps", SHAPE, SEEDS, sampler=sampler, steps=steps)
    assert torch.equal(edited, drawn)


def test_strength_zero_is_the_input():
    x = images()
    assert torch.equal(edit(MODEL, SCHEDULE, "eps", x, SEEDS, 0.0, steps=10), x)


def test_strength_runs_the_sub_chain_from_q_sample():
    """At S = 0.5 the network is called at the chain's timesteps <= 499 only, and the first call sees
    q_sample(x0, 499, ε) with ε the seed's first draw."""
    x = images()
    seen: list[tuple[int, torch.Tensor]] = []

    def model_fn(x_t, t):
        seen.append((int(t[0]), x_t.clone()))
        return MODEL(x_t, t)

    edit(model_fn, SCHEDULE, "eps", x, SEEDS, 0.5, sampler="ddim", steps=20)
    assert [t for t, _ in seen] == list(range(499, 0, -50))
    ab = float(SCHEDULE.alphas_cumprod[499])
    eps = ImageNoise(SEEDS, SHAPE)()
    expected = math.sqrt(ab) * x.double() + math.sqrt(1 - ab) * eps
    torch.testing.assert_close(seen[0][1], expected.float())


def test_more_strength_moves_further_from_the_input():
    x = images()
    dist = [float((edit(MODEL, SCHEDULE, "eps", x, SEEDS, s, sampler="ddim", steps=20) - x).abs().mean())
            for s in (0.1, 0.4, 0.8)]
    assert dist[0] < dist[1] < dist[2], dist


def half_mask(n=3) -> torch.Tensor:
    keep = torch.ones((n, 1, *SHAPE[1:]), dtype=torch.float64)
    keep[..., :, SHAPE[2] // 2:] = 0  # regenerate the right half
    return keep


@pytest.mark.parametrize("sampler, resample", [("dpm++2m", 0), ("ddpm", 0), ("heun", 0), ("ddim", 2)])
def test_inpainting_keeps_every_unmasked_pixel(sampler, resample):
    x, keep = images(), half_mask()
    out = edit(MODEL, SCHEDULE, "eps", x, SEEDS, 1.0, keep=keep, resample=resample, sampler=sampler, steps=8)
    kept = keep.bool().expand_as(x)
    assert torch.equal(out[kept], x[kept])
    assert not torch.equal(out[~kept], x[~kept])
    assert torch.isfinite(out).all() and out.abs().max() <= 1


def test_the_network_sees_the_known_region_at_the_level_of_each_step():
    """With a mask the known region of every x_t the network sees is √ᾱ_t x0 + √(1-ᾱ_t) ε' for a
    standard normal ε' (fresh at each step): the residual has mean ≈ 0 and variance ≈ 1."""
    x, keep = images(8), half_mask(8)
    seen: list[tuple[int, torch.Tensor]] = []

    def model_fn(x_t, t):
        seen.append((int(t[0]), x_t.double()))
        return MODEL(x_t, t)

    edit(model_fn, SCHEDULE, "eps", x, list(range(8)), 1.0, keep=keep, sampler="ddim", steps=10)
    kept = keep.bool().expand_as(x)
    for t, x_t in seen[1:]:  # the first call is at ᾱ ≈ 0, where the known region is noise alone
        ab = float(SCHEDULE.alphas_cumprod[t])
        r = ((x_t - math.sqrt(ab) * x.double()) / math.sqrt(1 - ab))[kept]
        assert abs(float(r.mean())) < 0.15 and abs(float(r.var()) - 1) < 0.2, (t, r.mean(), r.var())


def test_resampling_costs_r_calls_per_step_and_is_counted():
    calls: list[int] = []

    def model_fn(x_t, t):
        calls.append(int(t[0]))
        return MODEL(x_t, t)

    edit(model_fn, SCHEDULE, "eps", images(), SEEDS, 0.5, keep=half_mask(), resample=3, sampler="ddim",
         steps=20)
    assert len(calls) == 10 * 4
    assert network_calls("ddim", 20, SCHEDULE.betas.numpy(), start=9, resample=3) == (40, 0)
    assert network_calls("heun", 20, SCHEDULE.betas.numpy(), start=9) == (18, 0)


def test_bad_arguments():
    with pytest.raises(OptionError, match="--resample"):
        edit(MODEL, SCHEDULE, "eps", images(), SEEDS, 0.5, resample=2)
    with pytest.raises(DtoolsError, match="3 images but 2 seeds"):
        edit(MODEL, SCHEDULE, "eps", images(), SEEDS[:2], 0.5)


def test_an_inpaint_constraint_without_resampling_only_pastes():
    x0 = images().double()
    keep = half_mask()
    noise = ImageNoise(SEEDS, SHAPE)
    chain = Chain.make(SCHEDULE.betas.numpy(), 10)
    x = torch.zeros_like(x0)
    out = Inpaint(x0, keep, noise)(None, x, chain, 0)  # no denoiser call without resampling
    assert torch.equal(out[~keep.bool().expand_as(x0)], x[~keep.bool().expand_as(x0)])


# ------------------------------------------------------------------------------------------ inversion
def decode(x_T: torch.Tensor, steps: int) -> torch.Tensor:
    noise = ImageNoise(list(range(x_T.shape[0])), SHAPE)
    return sample(MODEL, SCHEDULE, "eps", x_T, noise, sampler="ddim", steps=steps, eta=0.0, clip_x0=False)


def test_ddim_inversion_round_trip_with_the_exact_denoiser():
    """On the data's own denoiser the round trip error is the discretisation's alone (measured: 0.074 of
    the [-1, 1] range at most at 50 steps, 0.020 at 200): first order, it shrinks with the step. The
    latents are centred, with a standard deviation under 1 (measured 0.80): the inputs are clipped to
    [-1, 1], narrower than the Gaussian the denoiser knows, so they map to a narrower x_T."""
    x = images(8).double()
    errors = {}
    for steps in (50, 200):
        x_T = invert(MODEL, SCHEDULE, "eps", x, steps=steps, clip_x0=False)
        errors[steps] = float((decode(x_T, steps) - x).abs().max())
        assert abs(float(x_T.mean())) < 0.1 and 0.6 < float(x_T.std()) < 1.0
    assert errors[50] < 0.1 and errors[200] < errors[50] / 3, errors


def test_fixed_point_refinement_makes_the_round_trip_closer():
    x = images(4).double()
    plain = invert(MODEL, SCHEDULE, "eps", x, steps=20, clip_x0=False)
    refined = invert(MODEL, SCHEDULE, "eps", x, steps=20, clip_x0=False, refine=3)
    e_plain = float((decode(plain, 20) - x).abs().max())
    e_refined = float((decode(refined, 20) - x).abs().max())
    assert e_refined < e_plain / 10, (e_plain, e_refined)


def test_inversion_counts_one_call_per_step_plus_refinements():
    calls: list[int] = []

    def model_fn(x_t, t):
        calls.append(int(t[0]))
        return MODEL(x_t, t)

    invert(model_fn, SCHEDULE, "eps", images(1), steps=5, refine=1)
    ts = Chain.make(SCHEDULE.betas.numpy(), 5).timesteps.tolist()  # 199, 399, ..., 999
    assert calls == [ts[0], ts[0], ts[0], ts[1], ts[1], ts[2], ts[2], ts[3], ts[3], ts[4]]


# ------------------------------------------------------------------------------------------- slerp
def test_slerp_ends_exactly_and_keeps_the_norm():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn((2, 1, 16, 16), generator=g, dtype=torch.float64).split(1)
    assert torch.equal(slerp(a, b, 0.0), a) and torch.equal(slerp(a, b, 1.0), b)
    walk = frames(a.float(), b.float(), 9)
    assert walk.shape == (9, 1, 16, 16)
    assert torch.equal(walk[0], a.float()[0]) and torch.equal(walk[-1], b.float()[0])
    norms = walk.flatten(1).norm(dim=1)
    lerp_mid = (0.5 * (a + b)).flatten(1).norm()
    assert float(norms.min()) > 0.9 * min(float(a.norm()), float(b.norm()))
    assert float(lerp_mid) < 0.8 * float(norms[4])  # the straight line loses about 1/√2 midway


def test_slerp_of_orthogonal_unit_vectors_and_of_parallel_ones():
    a = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(slerp(a, b, 0.5), torch.tensor([[math.sqrt(0.5), math.sqrt(0.5)]],
                                                                dtype=torch.float64))
    torch.testing.assert_close(slerp(a, 2 * a, 0.5), 1.5 * a)  # parallel: the straight line
    assert np.isfinite(slerp(a, a, 0.3).numpy()).all()
