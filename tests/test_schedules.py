"""dtools.schedules: exact numbers of every schedule, validation, summaries, and the forward process
q(x_t | x_0) checked statistically against the schedule it is built from."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dtools.diffusion import Schedule, q_sample
from dtools.errors import DtoolsError
from dtools.schedules import (
    SCHEDULES,
    adjust,
    cosine,
    linear,
    make_schedule,
    rescale_zero_terminal_snr,
    scaled_linear,
    sigmoid,
    summarize,
    validate_betas,
)


def cosine_f(u: float, s: float = 0.008) -> float:
    """Nichol & Dhariwal 2021, eq. 17, written out independently of dtools: f(u) = cos²((u+s)/(1+s) · π/2)."""
    return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2


# ---------------------------------------------------------------------------------------- linear
def test_linear_endpoints_and_spacing():
    b = make_schedule("linear", 1000)
    assert b.dtype == np.float64 and b.shape == (1000,)
    assert b[0] == 1e-4 and b[-1] == 0.02
    np.testing.assert_allclose(np.diff(b), (0.02 - 1e-4) / 999, rtol=1e-9)


def test_linear_custom_range_and_alpha_bar_T():
    b = make_schedule("linear", 500, beta_start=1e-3, beta_end=0.02)  # the seed report's range
    assert b[0] == 1e-3 and b[-1] == 0.02 and b.shape == (500,)
    # Ho et al.'s schedule leaves ᾱ_T = 4.036e-5 at T = 1000 (x_T is almost pure noise)
    ab = np.prod(1 - np.linspace(1e-4, 0.02, 1000))
    assert ab == pytest.approx(4.0358e-5, rel=1e-4)
    assert np.cumprod(1 - linear(1000))[-1] == pytest.approx(ab, rel=1e-12)


# ---------------------------------------------------------------------------------------- cosine
@pytest.mark.parametrize("t", [1, 10, 250, 500, 750, 990, 999])
def test_cosine_alpha_bar_matches_formula(t):
    T = 1000
    ab = np.cumprod(1 - make_schedule("cosine", T))
    assert ab[t - 1] == pytest.approx(cosine_f(t / T) / cosine_f(0), rel=1e-10, abs=1e-15)


def test_cosine_first_beta_and_clipping_at_0_999():
    T = 1000
    b = make_schedule("cosine", T)
    assert b[0] == pytest.approx(1 - cosine_f(1 / T) / cosine_f(0), rel=1e-12)
    # only the last step would exceed 0.999 (f(1) = 0 makes β_T = 1), and it is clipped to 0.999 exactly
    assert np.count_nonzero(b >= 0.999) == 1 and b[-1] == 0.999
    assert b[-2] == pytest.approx(1 - cosine_f(999 / T) / cosine_f(998 / T), rel=1e-9)
    ab = np.cumprod(1 - b)
    assert ab[-1] == pytest.approx(ab[-2] * 0.001, rel=1e-12)
    # β rises monotonically (no dips from the clipping)
    assert np.all(np.diff(b) > 0)


def test_cosine_offset_s_and_max_beta_argument():
    b = cosine(100, s=0.02, max_beta=0.5)
    assert b[0] == pytest.approx(1 - cosine_f(0.01, 0.02) / cosine_f(0, 0.02), rel=1e-12)
    assert b.max() == 0.5
    assert make_schedule("cosine", 100, s=0.02)[0] == b[0]


def test_cosine_rejects_beta_range():
    with pytest.raises(DtoolsError, match="cosine schedule has no --beta-start"):
        make_schedule("cosine", 100, beta_end=0.02)


# ---------------------------------------------------------------------------------------- sigmoid
def test_sigmoid_endpoints_and_midpoint():
    T, lo, hi = 1001, 1e-4, 0.02
    b = make_schedule("sigmoid", T)
    logistic = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert b[0] == pytest.approx(lo + (hi - lo) * logistic(-6), rel=1e-12)
    assert b[-1] == pytest.approx(lo + (hi - lo) * logistic(6), rel=1e-12)
    assert b[500] == pytest.approx((lo + hi) / 2, rel=1e-12)  # x = 0 in the middle
    # point-symmetric about the midpoint, and increasing
    np.testing.assert_allclose(b + b[::-1], lo + hi, rtol=1e-12)
    assert np.all(np.diff(b) > 0)


def test_sigmoid_width_and_range():
    b = sigmoid(11, beta_start=1e-3, beta_end=0.03, width=2.0)
    x = np.linspace(-2, 2, 11)
    np.testing.assert_allclose(b, 1e-3 + 0.029 / (1 + np.exp(-x)), rtol=1e-14)


# ---------------------------------------------------------------------------------------- scaled-linear
def test_scaled_linear_is_linear_in_sqrt_beta():
    b = make_schedule("scaled-linear", 1000)
    assert b[0] == pytest.approx(0.00085, rel=1e-14) and b[-1] == pytest.approx(0.012, rel=1e-14)
    np.testing.assert_allclose(np.diff(np.sqrt(b)), (math.sqrt(0.012) - math.sqrt(0.00085)) / 999, rtol=1e-9)
    assert np.all(b[1:-1] < np.linspace(0.00085, 0.012, 1000)[1:-1])  # convex: below the straight line
    np.testing.assert_allclose(scaled_linear(10, 1e-4, 1e-2), np.linspace(1e-2, 1e-1, 10) ** 2, rtol=1e-14)


def test_registry_names():
    assert list(SCHEDULES) == ["linear", "cosine", "sigmoid", "scaled-linear"]
    for name in SCHEDULES:
        b = make_schedule(name, 64)
        assert b.dtype == np.float64 and b.shape == (64,) and b.flags.c_contiguous
        assert np.all((b > 0) & (b < 1))


# ---------------------------------------------------------------------------------------- --max-beta
def test_max_beta_clips_at_0_02():
    raw = make_schedule("cosine", 1000)
    b = make_schedule("cosine", 1000, max_beta=0.02)
    assert b.max() == 0.02
    clipped = raw > 0.02
    assert clipped.sum() == np.count_nonzero(b == 0.02) > 0
    np.testing.assert_array_equal(b[~clipped], raw[~clipped])
    # a bound above every β changes nothing
    np.testing.assert_array_equal(make_schedule("linear", 100, max_beta=0.5), make_schedule("linear", 100))


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_max_beta_out_of_range(bad):
    with pytest.raises(DtoolsError, match="--max-beta"):
        make_schedule("linear", 100, max_beta=bad)


# ---------------------------------------------------------------------------------------- zero terminal SNR
@pytest.mark.parametrize("name", ["linear", "cosine", "scaled-linear"])
def test_zero_terminal_snr(name):
    raw = make_schedule(name, 1000)
    b = make_schedule(name, 1000, zero_terminal_snr=True)
    ab_raw, ab = np.cumprod(1 - raw), np.cumprod(1 - b)
    assert b[-1] == 1.0 and ab[-1] == 0.0  # exactly: x_T is pure noise
    assert ab[0] == pytest.approx(ab_raw[0], rel=1e-12)  # ᾱ_1 kept
    # Lin et al. 2023, Algorithm 1: sqrt(ᾱ) is shifted and scaled, so it is an affine map of the old one
    s_raw = np.sqrt(ab_raw)
    expected = (s_raw - s_raw[-1]) * s_raw[0] / (s_raw[0] - s_raw[-1])
    np.testing.assert_allclose(np.sqrt(ab), expected, rtol=1e-9, atol=1e-15)
    assert np.all(b[:-1] < 1)


def test_zero_terminal_snr_function_directly():
    b = rescale_zero_terminal_snr(np.full(10, 0.1))
    assert b[-1] == 1.0 and b[0] == pytest.approx(0.1, rel=1e-12)
    validate_betas(b)  # a final β of exactly 1 is allowed


def test_adjust_any_schedule():
    b = np.linspace(0.01, 0.5, 20)
    np.testing.assert_array_equal(adjust(b, max_beta=0.1), np.minimum(b, 0.1))
    z = adjust(b, zero_terminal_snr=True)
    assert z[-1] == 1.0 and z[0] == pytest.approx(0.01, rel=1e-12)
    np.testing.assert_array_equal(adjust(b), b)
    with pytest.raises(DtoolsError, match="my.npy: β is not finite"):
        adjust(np.array([0.1, np.nan]), name="my.npy")


# ---------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (np.full((2, 3), 0.1), "1-D"),
        (np.array(0.1), "1-D"),
        (np.array([0.1]), "at least 2 steps"),
        (np.array([0.1, np.nan, 0.2]), "not finite at step 2"),
        (np.array([0.1, np.inf]), "not finite"),
        (np.array([0.1, -np.inf]), "not finite"),
        (np.array([0.0, 0.1]), "step 1"),
        (np.array([0.1, -0.2, 0.3]), "step 2"),
        (np.array([0.1, 1.0, 0.3]), "step 2"),  # β = 1 is allowed only at the very end
        (np.array([0.1, 1.5]), r"step 2 has β = 1\.5$"),  # a plain number, not np.float64(1.5)
        (np.array([0.1, 0.2], dtype=np.complex128), "real numbers"),
        (np.array(["0.1", "0.2"]), "real numbers"),
        (np.array([0.1, 0.2], dtype=object), "real numbers"),
        (np.array([True, True]), "real numbers"),
    ],
)
def test_validate_rejects(bad, match):
    with pytest.raises(DtoolsError, match=match):
        validate_betas(bad, "beta.npy")


def test_validate_accepts_and_converts():
    out = validate_betas(np.linspace(0.1, 0.2, 5, dtype=np.float32)[::-1])
    assert out.dtype == np.float64 and out.flags.c_contiguous and out.shape == (5,)
    assert validate_betas(np.array([0.1, 1.0]))[-1] == 1.0


@pytest.mark.parametrize("T", [1, 0, -5])
def test_T_below_2_rejected(T):
    with pytest.raises(DtoolsError, match="at least 2"):
        make_schedule("linear", T)


def test_bad_name_and_beta_range():
    with pytest.raises(DtoolsError, match="unknown schedule 'quadratic'; choose one of: linear, cosine"):
        make_schedule("quadratic", 100)
    with pytest.raises(DtoolsError, match=r"\(0, 1\)"):
        make_schedule("linear", 100, beta_end=1.5)
    with pytest.raises(DtoolsError, match=r"\(0, 1\)"):
        make_schedule("sigmoid", 100, beta_start=0.0)


# ---------------------------------------------------------------------------------------- summary
def test_summarize_linear():
    b = make_schedule("linear", 1000)
    s = summarize(b)
    ab = np.cumprod(1 - b)
    assert s["T"] == 1000 and s["beta_first"] == 1e-4 and s["beta_last"] == 0.02
    assert s["beta_min"] == 1e-4 and s["beta_max"] == 0.02
    assert s["alpha_bar_T"] == pytest.approx(4.0358e-5, rel=1e-4)
    assert s["snr_1"] == pytest.approx((1 - 1e-4) / 1e-4, rel=1e-9)
    assert s["snr_T"] == pytest.approx(ab[-1] / (1 - ab[-1]), rel=1e-12)
    assert s["snr_T_db"] == pytest.approx(10 * math.log10(ab[-1] / (1 - ab[-1])), rel=1e-12)
    assert s["snr_T_db"] == pytest.approx(-43.94, abs=0.01)
    t_half = s["steps_half_signal"]
    assert ab[t_half - 1] < 0.5 <= ab[t_half - 2]  # first (1-based) t with ᾱ_t < 0.5


def test_summarize_edge_cases():
    s = summarize(make_schedule("linear", 1000, zero_terminal_snr=True))
    assert s["alpha_bar_T"] == 0.0 and s["snr_T"] == 0.0 and s["snr_T_db"] == -math.inf
    # a schedule that never halves the signal has no such step
    assert summarize(make_schedule("linear", 10))["steps_half_signal"] is None


# ---------------------------------------------------------------------------------------- forward process
def test_forward_process_statistics():
    """For a fixed x_0, x_t over n draws has mean sqrt(ᾱ_t) x_0 and variance 1-ᾱ_t (per pixel).

    Tolerances come from the sample size: the mean's standard error is sqrt((1-ᾱ)/n) and the sample
    variance's is (1-ᾱ) sqrt(2/(n-1)); we allow 5 of them (a false alarm about once in 3·10^6 per check).
    """
    betas = make_schedule("linear", 1000)
    sched = Schedule.from_betas(betas)
    ab = np.cumprod(1 - betas)
    n = 20_000
    gen = torch.Generator().manual_seed(0)
    x0 = torch.tensor([-1.0, -0.25, 0.5, 1.0]).reshape(1, 1, 2, 2)  # (1, C, H, W)
    for t in [0, 10, 100, 500, 999]:
        eps = torch.randn((n, 1, 2, 2), generator=gen)
        xt = q_sample(sched, x0.expand(n, -1, -1, -1), torch.full((n,), t, dtype=torch.long), eps)
        xt = xt.double().reshape(n, 4)
        mean_tol = 5 * math.sqrt((1 - ab[t]) / n) + 1e-6
        var_tol = 5 * (1 - ab[t]) * math.sqrt(2 / (n - 1)) + 1e-6
        np.testing.assert_allclose(xt.mean(0).numpy(), math.sqrt(ab[t]) * x0.flatten().numpy(), atol=mean_tol)
        np.testing.assert_allclose(xt.var(0).numpy(), 1 - ab[t], atol=var_tol)


def test_closed_form_matches_the_markov_chain():
    """Step-by-step x_t = sqrt(1-β_t) x_{t-1} + sqrt(β_t) ε reaches the same N(sqrt(ᾱ_t) x_0, 1-ᾱ_t)."""
    T, n = 40, 20_000
    betas = make_schedule("cosine", T)
    ab = np.cumprod(1 - betas)
    rng = np.random.default_rng(1)
    x0 = 0.8
    x = np.full(n, x0)
    for t in range(T):
        x = math.sqrt(1 - betas[t]) * x + math.sqrt(betas[t]) * rng.standard_normal(n)
        if t in (0, 9, 19, 38):
            assert abs(x.mean() - math.sqrt(ab[t]) * x0) < 5 * math.sqrt((1 - ab[t]) / n)
            assert abs(x.var() - (1 - ab[t])) < 5 * (1 - ab[t]) * math.sqrt(2 / (n - 1))
