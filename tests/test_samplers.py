"""Samplers against an oracle: for Gaussian data the exact denoiser is closed form.

Data x0 ~ N(μ, σ²) independently per pixel, with a fixed pattern of μ in [-0.5, 0.5] and σ in
[0.5, 1] (image-like). With a = sqrt(ᾱ_t), s = sqrt(1-ᾱ_t), x_t = a x0 + s ε is Gaussian with
mean a μ and variance v = a²σ² + s², and Cov(ε, x_t) = s, Cov(x0, x_t) = a σ². Conditioning a joint
Gaussian gives the exact (MSE-optimal) predictions the network is trained to approximate:

    E[ε  | x_t] = s (x_t - a μ) / v
    E[x0 | x_t] = μ + a σ² (x_t - a μ) / v
    E[v  | x_t] = a E[ε | x_t] - s E[x0 | x_t]

(check: a E[x0|x_t] + s E[ε|x_t] = a μ + (a²σ² + s²)(x_t - a μ)/v = x_t). At ᾱ = 0 (zero terminal
SNR) they give E[ε | x_T] = x_T, E[x0 | x_T] = μ, E[v | x_T] = -μ.

Every sampler is then linear-Gaussian per pixel, so what it outputs can be predicted exactly:

- the probability-flow ODE maps x_T to μ + σ (x_T - a_T μ) / sqrt(v_T) (it keeps the standardized
  value); the deterministic samplers must approach that map;
- DDIM (η = 0) writes (a σ, s) = sqrt(v) (cos θ, sin θ); one step from θ to θ' multiplies the
  standardized deviation by (a a' σ² + s s') / sqrt(v v') = cos(θ - θ'), so its output is exactly
  μ + σ Π_k cos(θ_k - θ_{k-1}) (x_T - a_T μ) / sqrt(v_T): first order loses variance (5-10 % at 50
  steps here), and the test checks the implementation to 1e-5 against this closed form;
- ancestral samplers propagate the mean and variance of the deviation d = x_t - a μ through
  d' = gain · d + sqrt(Σ) z; `gaussian_moments` below does that with the textbook coefficients.

Samples: 64 seeds x (1, 32, 32) pixels = 65,536 draws per configuration, so the standard error of
the pooled standardized mean is 1/256 = 0.0039 and of the variance sqrt(2/65536) = 0.0055; the
stochastic checks allow 5 standard errors.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import pytest
import torch

from dtools.diffusion import EDM_SIGMA_DATA, SPACINGS, Schedule, alphas_cumprod, respace, spaced_timesteps
from dtools.errors import DtoolsError
from dtools.samplers import SAMPLERS, Chain, ImageNoise, generate, generate_from_prior, image_seed, sample
from dtools.schedules import make_schedule

T = 1000
SHAPE = (1, 32, 32)
SEEDS = range(64)
E = len(SEEDS) * math.prod(SHAPE)
SE_MEAN, SE_VAR = 1 / math.sqrt(E), math.sqrt(2 / E)
BETAS = {"cosine": make_schedule("cosine", T), "linear": make_schedule("linear", T)}
SCHEDULES = {name: Schedule.from_betas(b) for name, b in BETAS.items()}


def gaussian_data(shape=SHAPE) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    mu = torch.rand(shape, generator=g, dtype=torch.float64) - 0.5  # (C, H, W) in [-0.5, 0.5]
    sigma = 0.5 + 0.5 * torch.rand(shape, generator=g, dtype=torch.float64)  # in [0.5, 1]
    return mu, sigma


def oracle(schedule: Schedule, parameterization: str, mu: torch.Tensor, sigma: torch.Tensor):
    """The exact network for Gaussian data (module docstring), as a model_fn. An "edm" network is given
    c_in x_t (EDM's c_in = 1/sqrt(σ² + α² σ_data²)) and returns EDM's F, written out here from
    Karras et al. 2022's Table 1 (F = (x0 - c_skip y)/c_out at y = x_t/α, σ_EDM = σ/α)."""

    def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert x_t.dtype == torch.float32 and t.dtype == torch.int64
        ab = schedule.alphas_cumprod[t].reshape(-1, 1, 1, 1)  # (B, 1, 1, 1) float64
        a, s = ab.sqrt(), (1 - ab).sqrt()
        x = x_t.double()
        if parameterization == "edm":
            sd, se = EDM_SIGMA_DATA, s / a
            q = (se**2 + sd**2).sqrt()
            c_in, c_skip, c_out = 1 / q, sd**2 / q**2, se * sd / q
            x = x * a / c_in  # the network was given c_in y = c_in x_t / α
        v = a * a * sigma**2 + s * s
        eps = s * (x - a * mu) / v
        x0 = mu + a * sigma**2 * (x - a * mu) / v
        if parameterization == "edm":
            return ((x0 - c_skip * x / a) / c_out).float()
        return {"eps": eps, "x0": x0, "v": a * eps - s * x0}[parameterization].float()

    return model_fn


pytestmark = pytest.mark.usefixtures("one_thread")


@cache  # tests share runs; callers must not modify the returned tensors
def run(name: str, parameterization: str, sampler: str, steps: int, **kw):
    mu, sigma = gaussian_data()
    noise = ImageNoise(SEEDS, SHAPE)
    x_T = noise()
    fn = oracle(SCHEDULES[name], parameterization, mu, sigma)
    x0 = sample(fn, SCHEDULES[name], parameterization, x_T, noise, sampler=sampler, steps=steps,
                clip_x0=False, **kw)
    return x0, x_T, mu, sigma


def flow_map(name: str, x_T, mu, sigma):
    """Where the exact probability-flow ODE takes x_T (module docstring)."""
    a_T = math.sqrt(float(SCHEDULES[name].alphas_cumprod[-1]))
    v_T = a_T**2 * sigma**2 + 1 - a_T**2
    return mu + sigma * (x_T - a_T * mu) / v_T.sqrt()


def ddim_contraction(betas, steps: int, spacing: str, sigma: torch.Tensor) -> torch.Tensor:
    """Π_k cos(θ_k - θ_{k-1}) over the chain, with tan θ = s / (a σ) and θ = 0 at x0."""
    ab = alphas_cumprod(betas)[spaced_timesteps(len(betas), steps, spacing)]
    thetas = [torch.atan2(torch.full_like(sigma, math.sqrt(1 - a)), math.sqrt(a) * sigma) for a in ab]
    thetas = [torch.zeros_like(sigma)] + thetas  # x0 first, then t_0 < t_1 < ...
    out = torch.ones_like(sigma)
    for lo, hi in zip(thetas[:-1], thetas[1:], strict=True):
        out = out * torch.cos(hi - lo)
    return out


def gaussian_moments(betas, sampler: str, steps: int, mu, sigma, *, spacing="trailing", eta=0.0,
                     variance="posterior"):
    """Exact mean and variance of the output of ddpm / ddim (any η) for x_T ~ N(0, I)."""
    ab = alphas_cumprod(betas)[spaced_timesteps(len(betas), steps, spacing)]
    mean, var = -math.sqrt(ab[-1]) * mu, torch.ones_like(sigma)  # of d_T = x_T - a_T μ
    for k in reversed(range(len(ab))):
        a, s = math.sqrt(ab[k]), math.sqrt(1 - ab[k])
        ab_prev = 1.0 if k == 0 else ab[k - 1]
        v = a * a * sigma**2 + s * s
        g, e = a * sigma**2 / v, s / v  # x0_hat - μ = g d,  eps_hat = e d
        if sampler == "ddim":
            sd = eta * math.sqrt((1 - ab_prev) / (1 - ab[k]) * (1 - ab[k] / ab_prev))
            gain, noise_var = math.sqrt(ab_prev) * g + math.sqrt(1 - ab_prev - sd * sd) * e, sd * sd
        else:  # ddpm on the respaced chain: posterior mean c1 x0_hat + c2 x_t (Ho et al. eq. 7)
            beta = 1 - ab[k] / ab_prev
            c1 = math.sqrt(ab_prev) * beta / (1 - ab[k])
            c2 = math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab[k])
            gain = c1 * g + c2
            sigma2 = beta * (1 - ab_prev) / (1 - ab[k]) if variance == "posterior" else beta
            noise_var = 0.0 if k == 0 else sigma2
        mean, var = gain * mean, gain * gain * var + noise_var
    return mu + mean, var


# --- stochastic samplers: moments ----------------------------------------------------------------

# (sampler, steps, options, largest |Var/σ² - 1| the exact recursion allows: the sampler's own bias)
# Each 1000-step sampler runs on two (schedule, parameterization) pairs, so that every sampler sees
# both schedules and every parameterization is seen at 1000 steps (2.5 s per run on one CPU core);
# test_parameterizations_give_the_same_samples covers the rest.
_BOTH = [("cosine", "eps"), ("linear", "eps"), ("cosine", "x0"), ("linear", "v")]
STOCHASTIC = [
    ("ddpm", 1000, {"variance": "beta"}, 0.005, [("cosine", "eps"), ("linear", "v")]),
    ("ddpm", 1000, {"variance": "posterior"}, 0.015, [("cosine", "x0"), ("linear", "eps")]),
    ("ddim", 1000, {"eta": 1.0}, 0.015, [("cosine", "v"), ("linear", "x0")]),
    ("ddim", 50, {"eta": 1.0}, 0.20, _BOTH),  # = 50-step ddpm with β̃: the known loss of diversity
    ("ddpm", 50, {"variance": "beta"}, 0.10, _BOTH),
]


@pytest.mark.parametrize("name,parameterization,sampler,steps,opts,bias", [
    (name, p, sampler, steps, opts, bias)
    for sampler, steps, opts, bias, pairs in STOCHASTIC
    for name, p in pairs
], ids=str)
def test_stochastic_samplers_match_gaussian_moments(name, parameterization, sampler, steps, opts, bias):
    x0, _, mu, sigma = run(name, parameterization, sampler, steps, **opts)
    mean, var = gaussian_moments(BETAS[name], sampler, steps, mu, sigma, **opts)
    u = (x0 - mean) / var.sqrt()  # standard normal if the implementation is right
    assert abs(float(u.mean())) < 5 * SE_MEAN
    assert abs(float(u.var()) - 1) < 5 * SE_VAR
    # ... and the sampler itself is close to the data: mean μ, variance σ² (up to its known bias).
    z = (x0 - mu) / sigma
    assert abs(float(z.mean())) < 5 * SE_MEAN + 0.002
    ratio = float((var / sigma**2).mean())
    assert abs(ratio - 1) < bias
    assert abs(float(z.var()) - 1) < bias + 5 * SE_VAR


def test_ddim_eta1_is_ddpm_with_posterior_variance():
    """DDIM's σ at η = 1 is sqrt(β̃') of the respaced chain, and its mean is the posterior mean."""
    a, *_ = run("linear", "eps", "ddim", 50, eta=1.0)
    b, *_ = run("linear", "eps", "ddpm", 50, variance="posterior")
    torch.testing.assert_close(a, b, rtol=0, atol=1e-9)


# --- deterministic samplers: the flow map --------------------------------------------------------


# at steps = T every spacing is the same chain, so 1000 steps run once
@pytest.mark.parametrize("name,parameterization,steps,spacing", [
    ("cosine", "eps", 1000, "trailing"), ("linear", "x0", 1000, "trailing"),
    *[(name, p, 50, spacing) for name, p in (("cosine", "v"), ("linear", "eps")) for spacing in SPACINGS],
])
def test_ddim_matches_its_closed_form(name, parameterization, steps, spacing):
    x0, x_T, mu, sigma = run(name, parameterization, "ddim", steps, spacing=spacing)
    a_T = math.sqrt(float(SCHEDULES[name].alphas_cumprod[-1]))
    # Leading spacing starts below T-1: its x_T is still drawn as N(0, I), the chain's top is t_{K-1}.
    top = spaced_timesteps(T, steps, spacing)[-1]
    a_top = math.sqrt(float(SCHEDULES[name].alphas_cumprod[top]))
    v_top = a_top**2 * sigma**2 + 1 - a_top**2
    contraction = ddim_contraction(BETAS[name], steps, spacing, sigma)
    expected = mu + sigma * contraction * (x_T - a_top * mu) / v_top.sqrt()
    torch.testing.assert_close(x0, expected, rtol=0, atol=2e-5)
    if steps == 1000:  # ... and at T steps DDIM is the flow map up to 0.6 % of the variance
        assert a_T == a_top
        z = (x0 - mu) / sigma
        z_flow = (flow_map(name, x_T, mu, sigma) - mu) / sigma
        assert abs(float(z.var() / z_flow.var()) - 1) < 0.006
        assert float((z - z_flow).pow(2).mean().sqrt()) < 0.003


# (sampler, steps, largest RMS distance from the flow map in units of σ, for cosine / linear)
ODE_SOLVERS = [("dpm++2m", 20, 0.003, 0.025), ("heun", 10, 0.02, 0.08), ("dpm++2m", 40, 0.002, 0.005)]


@pytest.mark.parametrize("sampler,steps,tol_cosine,tol_linear", ODE_SOLVERS)
@pytest.mark.parametrize("name", ["cosine", "linear"])
@pytest.mark.parametrize("parameterization", ["eps", "x0", "v"])
def test_ode_solvers_follow_the_flow_map(name, parameterization, sampler, steps, tol_cosine, tol_linear):
    x0, x_T, mu, sigma = run(name, parameterization, sampler, steps)
    z = (x0 - mu) / sigma
    z_flow = (flow_map(name, x_T, mu, sigma) - mu) / sigma
    rms = float((z - z_flow).pow(2).mean().sqrt())
    assert rms < (tol_cosine if name == "cosine" else tol_linear)
    assert abs(float(z.mean())) < 5 * SE_MEAN
    assert abs(float(z.var()) - 1) < 5 * SE_VAR + 3 * rms


# dpm++2m at 20 steps on every spacing (RMS distance from the flow map in units of σ, cosine / linear).
# A linspace or leading chain's last step is 3.6-4.9x longer than the one before it; taken second order
# it was off by 0.06 / 0.17. Leading never visits t = T-1, so it starts from a slightly wrong noise level.
@pytest.mark.parametrize("spacing,tol_cosine,tol_linear",
                         [("trailing", 0.003, 0.025), ("linspace", 0.003, 0.025), ("leading", 0.03, 0.025)])
@pytest.mark.parametrize("name", ["cosine", "linear"])
def test_dpmpp_2m_takes_a_long_last_step_first_order(name, spacing, tol_cosine, tol_linear):
    x0, x_T, mu, sigma = run(name, "eps", "dpm++2m", 20, spacing=spacing)
    z, z_flow = (x0 - mu) / sigma, (flow_map(name, x_T, mu, sigma) - mu) / sigma
    rms = float((z - z_flow).pow(2).mean().sqrt())
    assert rms < (tol_cosine if name == "cosine" else tol_linear), rms


def test_deterministic_samplers_agree():
    """ddim (1000 steps) and dpm++2m (20 and 40 steps) send the same x_T to nearly the same x0."""
    ref, *_ = run("cosine", "eps", "ddim", 1000)
    fast, *_ = run("cosine", "eps", "dpm++2m", 20)
    fine, *_ = run("cosine", "v", "dpm++2m", 40)
    mu, sigma = gaussian_data()
    assert float(((fast - ref) / sigma).abs().max()) < 0.03  # ddim-1000 itself is 0.007 off the flow map
    assert float(((fine - ref) / sigma).abs().max()) < 0.015


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_parameterizations_give_the_same_samples(sampler):
    opts = {"eta": 0.5} if sampler == "ddim" else {}
    out = {p: run("linear", p, sampler, 30, **opts)[0] for p in ("eps", "x0", "v", "edm")}
    torch.testing.assert_close(out["x0"], out["eps"], rtol=0, atol=1e-4)
    torch.testing.assert_close(out["v"], out["eps"], rtol=0, atol=1e-4)
    torch.testing.assert_close(out["edm"], out["eps"], rtol=0, atol=1e-4)  # its c_in reaches the network


# --- zero terminal SNR ---------------------------------------------------------------------------


@pytest.mark.parametrize("sampler,steps,opts", [
    ("ddpm", 100, {"variance": "posterior"}), ("ddim", 50, {"eta": 0.0}), ("ddim", 50, {"eta": 1.0}),
    ("dpm++2m", 20, {}), ("heun", 10, {}),
])
def test_zero_terminal_snr(sampler, steps, opts):
    """ᾱ_{T-1} = 0 (Lin et al. 2023): no NaN, and with v-prediction the same exactness as elsewhere."""
    betas = make_schedule("linear", T, zero_terminal_snr=True)
    schedule = Schedule.from_betas(betas)
    assert float(schedule.alphas_cumprod[-1]) == 0.0
    mu, sigma = gaussian_data()
    noise = ImageNoise(SEEDS, SHAPE)
    x_T = noise()
    x0 = sample(oracle(schedule, "v", mu, sigma), schedule, "v", x_T, noise, sampler=sampler, steps=steps,
                clip_x0=False, **opts)
    assert torch.isfinite(x0).all()
    if sampler == "ddpm" or opts.get("eta") == 1.0:
        mean, var = gaussian_moments(betas, sampler, steps, mu, sigma, **opts)
        u = (x0 - mean) / var.sqrt()
        assert abs(float(u.mean())) < 5 * SE_MEAN and abs(float(u.var()) - 1) < 5 * SE_VAR
    elif sampler == "ddim":  # x_T is exactly on the data's flow map (a_T = 0), then the closed form
        expected = mu + sigma * ddim_contraction(betas, steps, "trailing", sigma) * x_T
        torch.testing.assert_close(x0, expected, rtol=0, atol=2e-5)
    else:
        assert float(((x0 - mu - sigma * x_T) / sigma).pow(2).mean().sqrt()) < 0.08
    # ε-prediction says nothing about x0 at ᾱ = 0 (x0_hat := 0 there) but must not produce NaN
    eps_model = oracle(schedule, "eps", mu, sigma)
    eps = sample(eps_model, schedule, "eps", x_T, noise, sampler=sampler, steps=steps, clip_x0=True, **opts)
    assert torch.isfinite(eps).all()


# --- timesteps and respacing ---------------------------------------------------------------------


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("steps", [2, 7, 20, 50, 999, 1000])
def test_spaced_timesteps_and_respace(spacing, steps):
    ts = spaced_timesteps(T, steps, spacing)
    assert ts.dtype == np.int64 and len(ts) == steps
    assert np.all(np.diff(ts) > 0) and ts[0] >= 0 and ts[-1] <= T - 1
    if spacing in ("trailing", "linspace"):
        assert ts[-1] == T - 1
    if spacing in ("leading", "linspace"):
        assert ts[0] == 0
    if steps == T:
        np.testing.assert_array_equal(ts, np.arange(T))
    betas = BETAS["cosine"]
    chain = Chain.make(betas, steps, spacing)
    # the respaced chain has ᾱ'_k = ᾱ_{t_k} and its last step lands on x0 (ᾱ = 1)
    np.testing.assert_allclose(np.cumprod(1 - chain.betas), alphas_cumprod(betas)[ts], rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(chain.betas, respace(betas, ts))
    assert chain.alpha_cumprod_prev(0) == 1.0
    assert chain.alpha_cumprod_prev(len(chain) - 1) == chain.alphas_cumprod[-2]


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_network_sees_the_original_timesteps_in_order(sampler, spacing):
    """The previous timestep is the previous element of the subset (diffusers issues 12633/11347)."""
    seen = []

    def model_fn(x, t):
        assert len(set(t.tolist())) == 1
        seen.append(int(t[0]))
        return torch.zeros_like(x)

    steps = 10
    generate(model_fn, SCHEDULES["linear"], "eps", (1, 4, 4), [0, 1], sampler=sampler, steps=steps,
             spacing=spacing)
    ts = spaced_timesteps(T, steps, spacing)[::-1].tolist()
    if sampler == "heun":  # t_{K-1}, then t_k and its corrector at t_{k-1} ..., then t_0
        expected = [ts[0]] + [t for pair in zip(ts[1:-1], ts[2:], strict=True) for t in pair] + [ts[-1]]
    else:
        expected = ts
    assert seen == expected
    assert len(seen) == SAMPLERS[sampler].nfe(steps)


# --- generate: seeds, batches, options -----------------------------------------------------------


def _model(schedule=SCHEDULES["cosine"]):
    mu, sigma = gaussian_data((3, 6, 6))
    return oracle(schedule, "eps", mu, sigma * 0.6)


@pytest.mark.parametrize("sampler,opts", [("ddpm", {"variance": "beta"}), ("ddim", {"eta": 1.0}),
                                          ("dpm++2m", {}), ("heun", {})])
def test_batch_size_invariance(sampler, opts):
    seeds = [image_seed(7, i) for i in range(8)]
    kw = dict(sampler=sampler, steps=12, **opts)
    whole = generate(_model(), SCHEDULES["cosine"], "eps", (3, 6, 6), seeds, **kw)
    parts = torch.cat([generate(_model(), SCHEDULES["cosine"], "eps", (3, 6, 6), seeds[i:i + 3], **kw)
                       for i in range(0, 8, 3)])
    assert whole.shape == (8, 3, 6, 6) and whole.dtype == torch.float32
    assert torch.equal(whole, parts)
    alone = generate(_model(), SCHEDULES["cosine"], "eps", (3, 6, 6), [seeds[5]], **kw)
    assert torch.equal(alone[0], whole[5])


def test_seeds_reproduce_and_differ():
    kw = dict(sampler="ddpm", steps=10)
    a = generate(_model(), SCHEDULES["cosine"], "eps", (3, 6, 6), [1, 2, 3], **kw)
    b = generate(_model(), SCHEDULES["cosine"], "eps", (3, 6, 6), [1, 2, 3], **kw)
    c = generate(_model(), SCHEDULES["cosine"], "eps", (3, 6, 6), [4, 5, 6], **kw)
    assert torch.equal(a, b)
    assert all(not torch.equal(a[i], c[j]) for i in range(3) for j in range(3))
    assert not torch.equal(a[0], a[1])
    assert a.min() >= -1 and a.max() <= 1


def test_image_seed():
    assert image_seed(0, 0) == image_seed(0, 0)
    seeds = {image_seed(s, i) for s in range(20) for i in range(200)}
    assert len(seeds) == 20 * 200  # no collisions across seeds and indices
    assert all(0 <= s < 2**63 for s in seeds)
    assert image_seed(0, 1) != image_seed(1, 0)


def test_callback_and_clipping():
    events = []
    x = generate(_model(), SCHEDULES["cosine"], "eps", (3, 6, 6), [0, 1], sampler="dpm++2m", steps=5,
                 callback=events.append)
    assert [e["step"] for e in events] == list(range(5))
    assert [e["t"] for e in events] == spaced_timesteps(T, 5, "trailing")[::-1].tolist()
    assert all(e["steps"] == 5 and e["x"].shape == (2, 3, 6, 6) for e in events)
    assert all(e["x0_hat"].abs().max() <= 1 for e in events)  # clip_x0 on by default
    torch.testing.assert_close(events[-1]["x0_hat"].float(), x)  # the last prediction is the image
    # a model that predicts far outside [-1, 1]: clipping keeps x0_hat inside, the output always is
    wild = lambda x, t: 10 * torch.ones_like(x)  # noqa: E731
    y = generate(wild, SCHEDULES["cosine"], "x0", (1, 2, 2), [0], sampler="ddim", steps=5, clip_x0=False)
    assert y.max() == 1


@pytest.mark.parametrize("kwargs,match", [
    ({"sampler": "euler"}, "unknown sampler"),
    ({"steps": 1001}, r"--steps: must lie in \[2, 1000\]"),
    ({"steps": 1}, "--steps"),
    ({"eta": 1.5}, "--eta"),
    ({"variance": "learned"}, "unknown variance"),
    ({"spacing": "karras"}, "unknown spacing"),
])
def test_bad_options(kwargs, match):
    with pytest.raises(DtoolsError, match=match):
        generate(_model(), SCHEDULES["cosine"], "eps", (3, 6, 6), [0], **kwargs)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_a_condition_reaches_every_network_call(sampler):
    """`generate(..., cond=)` hands the condition to every network call (heun's corrector too)."""
    labels = torch.tensor([3, 5])
    seen: list = []

    def model_fn(x_t, t, cond=None):
        seen.append(cond)
        return 0.3 * x_t

    kw = dict(sampler=sampler, steps=5)
    generate(model_fn, SCHEDULES["cosine"], "eps", (3, 4, 4), [1, 2], cond=labels, **kw)
    assert len(seen) == SAMPLERS[sampler].nfe(5) and all(c is labels for c in seen)
    # without one, the network is called as (x_t, t), as every network today (a third argument: TypeError)
    generate(lambda x_t, t: 0.3 * x_t, SCHEDULES["cosine"], "eps", (3, 4, 4), [1], **kw)


def test_a_non_finite_output_is_one_error_for_both_kinds_of_model():
    nan = lambda x, *rest: torch.full_like(x, float("nan"))  # noqa: E731
    message = "sampling produced NaN or infinite values"
    with pytest.raises(DtoolsError, match=message):
        generate(nan, SCHEDULES["cosine"], "x0", (1, 2, 2), [0], steps=3, clip_x0=False)
    with pytest.raises(DtoolsError, match=message):
        generate_from_prior(lambda z: torch.full((z.shape[0], 1, 2, 2), float("inf")), 4, [0, 1])
    x = generate_from_prior(lambda z: 3 * z.reshape(-1, 1, 2, 2), 4, [0, 1])
    assert x.dtype == torch.float32 and x.shape == (2, 1, 2, 2) and x.abs().max() <= 1


def test_bad_inputs():
    with pytest.raises(DtoolsError, match="parameterization"):
        generate(_model(), SCHEDULES["cosine"], "score", (3, 6, 6), [0])
    with pytest.raises(DtoolsError, match="no images"):
        generate(_model(), SCHEDULES["cosine"], "eps", (3, 6, 6), [])
    nan = lambda x, t: torch.full_like(x, float("nan"))  # noqa: E731
    with pytest.raises(DtoolsError, match="NaN"):
        generate(nan, SCHEDULES["cosine"], "eps", (1, 2, 2), [0], steps=3)
