"""Exact-number checks of dtools.diffusion against values worked out by hand.

The hand schedule: betas = [0.1, 0.2, 0.5], so alphas = [0.9, 0.8, 0.5] and
ᾱ = [0.9, 0.72, 0.36], ᾱ_prev = [1, 0.9, 0.72], SNR = ᾱ/(1-ᾱ) = [9, 18/7, 9/16].
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dtools import diffusion as D
from dtools.errors import DtoolsError

BETAS = np.array([0.1, 0.2, 0.5])


@pytest.fixture
def s() -> D.Schedule:
    return D.Schedule.from_betas(BETAS)


def close(a, b, tol=1e-12):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def test_schedule_tables_by_hand(s):
    assert s.T == 3 and s.betas.dtype == torch.float64
    close(s.alphas_cumprod, [0.9, 0.72, 0.36])
    close(s.alphas_cumprod_prev, [1.0, 0.9, 0.72])
    # β̃_t = (1-ᾱ_{t-1})/(1-ᾱ_t) β_t: 0, 0.1/0.28·0.2 = 1/14, 0.28/0.64·0.5 = 0.21875
    close(s.posterior_variance, [0.0, 1 / 14, 0.21875])
    close(s.posterior_log_variance_clipped, [math.log(1 / 14), math.log(1 / 14), math.log(0.21875)])
    close(s.posterior_mean_coef1, [1.0, 0.2 * math.sqrt(0.9) / 0.28, 0.5 * math.sqrt(0.72) / 0.64])
    close(s.posterior_mean_coef2, [0.0, 0.1 * math.sqrt(0.8) / 0.28, 0.28 * math.sqrt(0.5) / 0.64])
    close(s.snr(), [9.0, 18 / 7, 9 / 16])


def test_q_sample_by_hand(s):
    x0 = torch.tensor([[[[1.0, -1.0]]], [[[0.5, 0.0]]]], dtype=torch.float64)  # (2, 1, 1, 2)
    eps = torch.tensor([[[[0.5, 2.0]]], [[[-1.0, 1.0]]]], dtype=torch.float64)
    t = torch.tensor([1, 2])
    x_t = D.q_sample(s, x0, t, eps)
    a1, s1 = math.sqrt(0.72), math.sqrt(0.28)
    a2, s2 = 0.6, 0.8  # sqrt(0.36), sqrt(0.64)
    close(x_t[0, 0, 0], [a1 * 1.0 + s1 * 0.5, a1 * -1.0 + s1 * 2.0])
    close(x_t[1, 0, 0], [a2 * 0.5 - s2 * 1.0, s2 * 1.0])


def test_q_sample_keeps_dtype_float32(s):
    x0 = torch.ones(1, 3, 2, 2)
    out = D.q_sample(s, x0, torch.tensor([2]), torch.zeros_like(x0))
    assert out.dtype == torch.float32
    assert torch.equal(out, torch.full_like(x0, 0.6))


def test_training_targets_by_hand(s):
    x0 = torch.tensor([1.0], dtype=torch.float64).reshape(1, 1, 1, 1)
    eps = torch.tensor([0.5], dtype=torch.float64).reshape(1, 1, 1, 1)
    t = torch.tensor([2])
    assert D.training_target(s, "eps", x0, eps, t).item() == 0.5
    assert D.training_target(s, "x0", x0, eps, t).item() == 1.0
    # v = sqrt(ᾱ) ε - sqrt(1-ᾱ) x0 = 0.6·0.5 - 0.8·1 = -0.5
    assert D.training_target(s, "v", x0, eps, t).item() == pytest.approx(-0.5, abs=1e-15)
    with pytest.raises(DtoolsError, match="parameterization"):
        D.training_target(s, "score", x0, eps, t)


@pytest.mark.parametrize("param", D.PARAMETERIZATIONS)
def test_split_prediction_round_trips(s, param):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 2])
    x_t = D.q_sample(s, x0, t, eps)
    out = D.training_target(s, param, x0, eps, t)
    x0_hat, eps_hat = D.split_prediction(s, param, out, x_t, t)
    close(x0_hat, x0, 1e-12)
    close(eps_hat, eps, 1e-12)


def test_split_prediction_zero_terminal_snr():
    s = D.Schedule.from_betas(np.array([0.1, 1.0]))  # ᾱ = [0.9, 0]
    x_t = torch.full((1, 1, 1, 1), 0.7, dtype=torch.float64)
    t = torch.tensor([1])
    x0, eps = D.split_prediction(s, "eps", torch.full_like(x_t, 0.7), x_t, t)
    assert x0.item() == 0.0 and eps.item() == 0.7  # ε says nothing about x0 there
    x0, eps = D.split_prediction(s, "v", torch.full_like(x_t, 0.25), x_t, t)
    assert x0.item() == -0.25 and eps.item() == 0.7  # x0 = -v, ε = x_t at ᾱ = 0


def test_edm_preconditioning_against_karras_formulas(s):
    """"edm" against Karras et al. 2022's Table 1 in their own variables: y = x_t/α, σ_e = σ/α,
    c_skip = σ_d²/(σ_e²+σ_d²), c_out = σ_e σ_d/√(σ_e²+σ_d²), c_in = 1/√(σ_e²+σ_d²),
    D = c_skip y + c_out F."""
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(3, 1, 2, 2, generator=g, dtype=torch.float64)
    eps = torch.randn(3, 1, 2, 2, generator=g, dtype=torch.float64)
    F = torch.randn(3, 1, 2, 2, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 2])
    x_t = D.q_sample(s, x0, t, eps)
    ab = s.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    y, se, sd = x_t / ab.sqrt(), ((1 - ab) / ab).sqrt(), D.EDM_SIGMA_DATA
    c_skip, c_out = sd**2 / (se**2 + sd**2), se * sd / (se**2 + sd**2).sqrt()
    close(D.network_input(s, "edm", x_t, t), y / (se**2 + sd**2).sqrt(), 1e-12)
    x0_hat, eps_hat = D.split_prediction(s, "edm", F, x_t, t)
    close(x0_hat, c_skip * y + c_out * F, 1e-12)
    close(eps_hat, (y - x0_hat) / se, 1e-12)  # y = x0 + σ_e ε
    close(D.training_target(s, "edm", x0, eps, t), (x0 - c_skip * y) / c_out, 1e-12)
    assert D.network_input(s, "v", x_t, t) is x_t  # only "edm" scales the input


def test_edm_with_unit_sigma_data_is_minus_v(s, monkeypatch):
    monkeypatch.setattr(D, "EDM_SIGMA_DATA", 1.0)
    g = torch.Generator().manual_seed(2)
    x0, eps = (torch.randn(3, 1, 2, 2, generator=g, dtype=torch.float64) for _ in range(2))
    t = torch.tensor([0, 1, 2])
    close(D.training_target(s, "edm", x0, eps, t), -D.training_target(s, "v", x0, eps, t), 1e-12)
    x_t = D.q_sample(s, x0, t, eps)
    close(D.network_input(s, "edm", x_t, t), x_t, 1e-12)  # VP's x_t already has unit variance
    close(D.loss_weight(s, "edm", t, 5.0), D.loss_weight(s, "v", t, 5.0), 1e-6)


def test_edm_at_zero_terminal_snr():
    s = D.Schedule.from_betas(np.array([0.1, 1.0]))  # ᾱ = [0.9, 0]
    x_t = torch.full((1, 1, 1, 1), 0.7, dtype=torch.float64)
    t = torch.tensor([1])
    x0, eps = D.split_prediction(s, "edm", torch.full_like(x_t, 0.4), x_t, t)
    assert x0.item() == pytest.approx(0.4 * D.EDM_SIGMA_DATA) and eps.item() == pytest.approx(0.7)
    assert D.network_input(s, "edm", x_t, t).item() == pytest.approx(0.7)  # c_in x_t = x_t / σ, σ = 1


def test_q_posterior_by_hand(s):
    x0 = torch.tensor([1.0], dtype=torch.float64).reshape(1, 1, 1, 1)
    x_t = torch.tensor([2.0], dtype=torch.float64).reshape(1, 1, 1, 1)
    mean, var = D.q_posterior(s, x0, x_t, torch.tensor([2]))
    expected = 0.5 * math.sqrt(0.72) / 0.64 * 1.0 + 0.28 * math.sqrt(0.5) / 0.64 * 2.0
    close(mean.flatten(), [expected])
    close(var.flatten(), [0.21875])
    # at t = 0 the posterior is x0 itself with zero variance
    mean0, var0 = D.q_posterior(s, x0, x_t, torch.tensor([0]))
    assert mean0.item() == pytest.approx(1.0, abs=1e-15) and var0.item() == 0.0


def test_q_posterior_matches_gaussian_conditioning():
    """μ̃, β̃ against Bayes' rule done independently: prior N(sqrt(ᾱ_{t-1}) x0, 1-ᾱ_{t-1}) times the
    likelihood N(x_t; sqrt(α_t) x_{t-1}, β_t)."""
    betas = np.linspace(1e-3, 0.2, 7)
    s = D.Schedule.from_betas(betas)
    ab = np.cumprod(1 - betas)
    x0, x_t = 0.3, -1.1
    for t in range(1, 7):
        prior_mean, prior_var = math.sqrt(ab[t - 1]) * x0, 1 - ab[t - 1]
        alpha = 1 - betas[t]
        precision = 1 / prior_var + alpha / betas[t]
        want_var = 1 / precision
        want_mean = want_var * (prior_mean / prior_var + math.sqrt(alpha) * x_t / betas[t])
        mean, var = D.q_posterior(
            s, torch.tensor([[[[x0]]]], dtype=torch.float64), torch.tensor([[[[x_t]]]], dtype=torch.float64),
            torch.tensor([t]),
        )
        assert mean.item() == pytest.approx(want_mean, rel=1e-12)
        assert var.item() == pytest.approx(want_var, rel=1e-12)


def test_reverse_variance(s):
    like = torch.zeros(3, 1, 1, 1, dtype=torch.float64)
    t = torch.tensor([0, 1, 2])
    close(D.reverse_variance(s, "beta", t, like).flatten(), [0.1, 0.2, 0.5])
    close(D.reverse_variance(s, "posterior", t, like).flatten(), [0.0, 1 / 14, 0.21875])
    with pytest.raises(DtoolsError, match="variance"):
        D.reverse_variance(s, "learned", t, like)


def test_min_snr_weights_by_hand(s):
    t = torch.tensor([0, 1, 2])
    assert torch.equal(D.loss_weight(s, "eps", t, None), torch.ones(3))
    # SNR = [9, 18/7, 9/16], γ = 5: min(SNR, γ) = [5, 18/7, 9/16]
    close(D.loss_weight(s, "eps", t, 5.0), [5 / 9, 1.0, 1.0], 1e-7)
    close(D.loss_weight(s, "x0", t, 5.0), [5.0, 18 / 7, 9 / 16], 1e-7)
    close(D.loss_weight(s, "v", t, 5.0), [5 / 10, (18 / 7) / (25 / 7), (9 / 16) / (25 / 16)], 1e-7)
    assert D.loss_weight(s, "eps", t, 5.0).dtype == torch.float32
    with pytest.raises(DtoolsError, match="positive"):
        D.loss_weight(s, "eps", t, 0.0)


def test_min_snr_weights_agree_across_parameterizations(s):
    """The weights express the same x0-space loss: w_eps·SNR = w_x0 = w_v·(SNR+1) = w_edm/c_out²."""
    t = torch.tensor([0, 1, 2])
    snr = s.snr().float()
    w_eps, w_x0, w_v, w_edm = (D.loss_weight(s, p, t, 2.0) for p in ("eps", "x0", "v", "edm"))
    close(w_eps * snr, w_x0, 1e-6)
    close(w_v * (snr + 1), w_x0, 1e-6)
    sd2 = D.EDM_SIGMA_DATA**2
    # x0 - x0_hat = c_out (F - target), with c_out² = σ_d²/(1 + σ_d² SNR)
    close(w_edm * (1 + sd2 * snr) / sd2, w_x0, 1e-6)


def test_uniform_timesteps_are_randint():
    """"uniform" is Algorithm 1's draw, the very stream dtools drew before --t-dist existed."""
    s = D.Schedule.from_betas(np.linspace(1e-4, 0.02, 1000))
    torch.manual_seed(3)
    expected = torch.randint(0, 1000, (64,))
    torch.manual_seed(3)
    assert torch.equal(D.draw_timesteps(s, 64, "uniform", "cpu"), expected)


def test_lognormal_timesteps_follow_edm_noise_levels(monkeypatch):
    """Without its uniform share, ln σ_t of the drawn t has EDM's mean -1.2 and std 1.2, and each draw
    is rounded to the t whose ln σ_t is nearest (checked by hand on a 3-step schedule)."""
    monkeypatch.setattr(D, "LOGNORMAL_UNIFORM_SHARE", 0.0)
    s = D.Schedule.from_betas(np.linspace(1e-4, 0.02, 1000))
    torch.manual_seed(0)
    t = D.draw_timesteps(s, 100_000, "lognormal", "cpu")
    assert t.dtype == torch.int64 and 0 <= int(t.min()) and int(t.max()) < 1000
    ab = s.alphas_cumprod
    log_sigma = (0.5 * (torch.log1p(-ab) - torch.log(ab)))[t]
    assert abs(float(log_sigma.mean()) - D.LOGNORMAL_P_MEAN) < 0.02
    assert abs(float(log_sigma.std()) - D.LOGNORMAL_P_STD) < 0.03
    # 3 steps: ln σ_t = ln sqrt((1-ᾱ)/ᾱ) for ᾱ = 0.9, 0.72, 0.36 is -1.099, -0.472, 0.288
    ln_sigma = [0.5 * math.log((1 - a) / a) for a in (0.9, 0.72, 0.36)]
    lo, hi = (ln_sigma[0] + ln_sigma[1]) / 2, (ln_sigma[1] + ln_sigma[2]) / 2  # -0.785, -0.092
    small = D.Schedule.from_betas(BETAS)
    torch.manual_seed(1)
    draws = torch.randn((1000,), dtype=torch.float64) * D.LOGNORMAL_P_STD + D.LOGNORMAL_P_MEAN
    torch.manual_seed(1)
    got = D.draw_timesteps(small, 1000, "lognormal", "cpu")
    expected = (draws > lo).long() + (draws > hi).long()
    assert torch.equal(got, expected)


@pytest.mark.parametrize("zero_terminal_snr", [False, True])
def test_lognormal_timesteps_reach_the_noisiest_steps(zero_terminal_snr):
    """Every trailing sampling chain starts at t = T-1: "lognormal" must train it too. EDM's lognormal
    alone never drew it at zero terminal SNR (σ_T = ∞) and drew t >= 900 0.5 % of the time on cosine;
    its uniform share gives every t at least share/T."""
    from dtools.schedules import make_schedule

    s = D.Schedule.from_betas(make_schedule("cosine", 1000, zero_terminal_snr=zero_terminal_snr))
    torch.manual_seed(0)
    t = D.draw_timesteps(s, 200_000, "lognormal", "cpu")
    share = D.LOGNORMAL_UNIFORM_SHARE
    assert share > 0
    last = float((t == 999).double().mean())
    assert last > 0.5 * share / 1000, last
    assert float((t >= 900).double().mean()) > 0.8 * share * 0.1


def test_min_snr_floor_keeps_the_noisiest_steps_in_training():
    """Min-SNR with v or x0 weighs t = T-1 of a zero-terminal-SNR schedule by exactly 0 (and cosine's
    by ~1e-8); the floor lifts the noisy side (SNR < 1) to at least its value and leaves the rest."""
    from dtools.schedules import make_schedule

    for zero in (False, True):
        s = D.Schedule.from_betas(make_schedule("cosine", 1000, zero_terminal_snr=zero))
        t = torch.arange(1000)
        snr = s.snr()
        for param in ("v", "x0"):
            bare = D.loss_weight(s, param, t, 5.0)
            assert float(bare[-1]) < 1e-6
            floored = D.loss_weight(s, param, t, 5.0, floor=0.2)
            assert float(floored[-1]) == pytest.approx(0.2)
            noisy = snr < 1
            assert torch.equal(floored[~noisy], bare[~noisy])
            assert torch.equal(floored[noisy], bare[noisy].clamp_min(0.2))
    s = D.Schedule.from_betas(make_schedule("cosine", 1000))
    t = torch.arange(1000)
    # ε's Min-SNR weight is 1 wherever SNR < γ: a floor below 1 changes nothing
    assert torch.equal(D.loss_weight(s, "eps", t, 5.0, floor=0.5), D.loss_weight(s, "eps", t, 5.0))
    with pytest.raises(DtoolsError, match="min-snr-floor"):
        D.loss_weight(s, "v", t, 5.0, floor=1.5)


def test_lognormal_timesteps_make_no_float64_on_the_device(monkeypatch):
    """Apple's MPS has no float64: the draw and its rounding happen on the CPU, and only the int64
    timesteps go to the device (the "meta" device stands in for it; a float64 randn there is refused)."""
    real = torch.randn

    def randn(*args, **kw):
        if kw.get("dtype") == torch.float64 and torch.device(kw.get("device") or "cpu").type != "cpu":
            raise TypeError("float64 on a device that has none")
        return real(*args, **kw)

    monkeypatch.setattr(torch, "randn", randn)
    s = D.Schedule.from_betas(np.linspace(1e-4, 0.02, 1000))
    t = D.draw_timesteps(s, 16, "lognormal", "meta")
    assert t.device.type == "meta" and t.dtype == torch.int64 and t.shape == (16,)


def test_unknown_timestep_distribution_is_refused(s):
    with pytest.raises(DtoolsError, match="lognormal"):
        D.draw_timesteps(s, 4, "beta", "cpu")


def test_spaced_timesteps_by_hand():
    assert D.spaced_timesteps(1000, 10, "trailing").tolist() == list(range(99, 1000, 100))
    assert D.spaced_timesteps(1000, 10, "leading").tolist() == list(range(0, 1000, 100))
    assert D.spaced_timesteps(1000, 10, "linspace").tolist() == list(range(0, 1000, 111))
    assert D.spaced_timesteps(10, 3, "trailing").tolist() == [2, 6, 9]
    assert D.spaced_timesteps(10, 3, "leading").tolist() == [0, 3, 6]
    assert D.spaced_timesteps(10, 3, "linspace").tolist() == [0, 4, 9]
    assert D.spaced_timesteps(5, 5, "trailing").tolist() == [0, 1, 2, 3, 4]


def test_spaced_timesteps_every_count_is_valid():
    # Regression: np.arange(T, 0, -T/steps) sometimes yielded steps+1 values (e.g. T=15, steps=13).
    assert D.spaced_timesteps(15, 13, "trailing").tolist() == [0, 1, 2, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14]
    for T in (2, 15, 17, 34, 97, 100, 1000):
        for steps in range(1, T + 1):
            for spacing in D.SPACINGS:
                ts = D.spaced_timesteps(T, steps, spacing)
                assert len(ts) == steps and ts[0] >= 0 and ts[-1] <= T - 1 and np.all(np.diff(ts) > 0)
                if spacing == "trailing":
                    assert ts[-1] == T - 1


def test_spaced_timesteps_errors():
    with pytest.raises(DtoolsError, match="--steps"):
        D.spaced_timesteps(10, 11)
    with pytest.raises(DtoolsError, match="--steps"):
        D.spaced_timesteps(10, 0)
    with pytest.raises(DtoolsError, match="spacing"):
        D.spaced_timesteps(10, 3, "middle")


def test_respace_by_hand():
    # keep t = 0 and 2: ᾱ' = [0.9, 0.36], β' = [1 - 0.9, 1 - 0.36/0.9] = [0.1, 0.6]
    close(D.respace(BETAS, np.array([0, 2])), [0.1, 0.6])
    close(D.respace(BETAS, np.array([1, 2])), [0.28, 0.5])
    close(D.respace(BETAS, np.arange(3)), BETAS)


def test_respace_keeps_alphas_cumprod():
    betas = np.linspace(1e-4, 0.02, 1000)
    ts = D.spaced_timesteps(1000, 25)
    close(D.alphas_cumprod(D.respace(betas, ts)), D.alphas_cumprod(betas)[ts], 1e-13)


def test_extract_shape_and_dtype(s):
    like = torch.zeros(2, 3, 4, 4, dtype=torch.float32)
    out = D.extract(s.alphas_cumprod, torch.tensor([0, 2]), like)
    assert out.shape == (2, 1, 1, 1) and out.dtype == torch.float32
    assert out.flatten().tolist() == [pytest.approx(0.9), pytest.approx(0.36)]
