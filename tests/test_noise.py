"""dtools.noise: exact x_t, the (image, schedule, t) order, seeds, and the statistics of q(x_t | x_0)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dtools.diffusion import Schedule
from dtools.errors import DtoolsError
from dtools.noise import (
    check_timesteps,
    forward_noise,
    image_eps,
    noise_images,
    parse_timesteps,
)
from dtools.schedules import make_schedule


def batch(n: int = 2, size: int = 5, c: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, c), dtype=np.uint8)


def reference(images, betas_list, timesteps, seed):
    """x_t computed by hand in numpy, independently of dtools.diffusion: [N·S·K, H, W, C] uint8."""
    out = []
    for i, img in enumerate(images):
        x0 = img.astype(np.float64) / 127.5 - 1.0  # (H, W, C)
        eps = np.random.default_rng([seed, i]).standard_normal((img.shape[2], *img.shape[:2]))  # (C, H, W)
        eps = eps.transpose(1, 2, 0)  # (H, W, C)
        for betas in betas_list:
            ab = np.cumprod(1.0 - betas)
            for t in timesteps:
                x = x0 if t is None else np.sqrt(ab[t]) * x0 + np.sqrt(1.0 - ab[t]) * eps
                out.append(np.round((np.clip(x, -1, 1) + 1) * 127.5).astype(np.uint8))
    return np.stack(out)


def test_parse_timesteps():
    assert parse_timesteps("0,50,100,250,500,999") == [0, 50, 100, 250, 500, 999]
    assert parse_timesteps(" x0, 0 ,X0,7") == [None, 0, None, 7]
    for bad in ["", ",", "1.5", "a", "0,,3", "1e3"]:
        with pytest.raises(DtoolsError, match="-t"):
            parse_timesteps(bad)


def test_check_timesteps_range():
    check_timesteps([0, None, 999], 1000)
    for t in (-1, 1000):
        msg = rf"timestep {t} is out of range for cosine \(T = 1000\): use 0..999"
        with pytest.raises(DtoolsError, match=msg):
            check_timesteps([0, t], 1000, "cosine")


def test_exact_values_and_order():
    """Every entry equals the hand-computed x_t, in the order image, then schedule, then t."""
    images = batch(n=2)
    betas = [make_schedule("linear", 1000), make_schedule("cosine", 200), make_schedule("sigmoid", 300)]
    ts = [None, 0, 1, 57, 199]
    out = noise_images(images, betas, ts, seed=3)
    assert out.shape == (2 * 3 * 5, 5, 5, 3) and out.dtype == np.uint8
    ref = reference(images, betas, ts, seed=3)
    # float64 both ways; rounding may differ only for values within 1e-9 of a half level
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1
    assert (out != ref).mean() < 1e-3
    # order: entry (n, s, k) sits at (n·S + s)·K + k
    grid = out.reshape(2, 3, 5, 5, 5, 3)
    for n in range(2):
        for s in range(3):
            np.testing.assert_array_equal(grid[n, s, 0], images[n])  # x0 column = the input itself


def test_t0_is_x1_not_the_clean_image():
    """t = 0 is the index of x_1: sqrt(ᾱ_0) x0 + sqrt(1-ᾱ_0) ε with ᾱ_0 = 1 - β_1, exactly as documented."""
    images = np.full((1, 16, 16, 1), 128, np.uint8)
    betas = make_schedule("cosine", 1000)
    (x1,) = noise_images(images, [betas], [0], seed=0)
    x0 = 128 / 127.5 - 1.0
    eps = image_eps((1, 16, 16), 0, 0)[0].numpy()  # (H, W)
    expect = np.round((np.clip(np.sqrt(1 - betas[0]) * x0 + np.sqrt(betas[0]) * eps, -1, 1) + 1) * 127.5)
    np.testing.assert_array_equal(x1[..., 0], expect.astype(np.uint8))
    assert (x1 != 128).any()  # cosine β_1 ≈ 4e-5: std 0.8 grey levels, visible in some pixels
    (clean,) = noise_images(images, [betas], [None], seed=0)
    np.testing.assert_array_equal(clean, images[0])


def test_same_eps_for_every_schedule():
    """With equal betas under two names, rows are identical: only the schedule differs between rows."""
    images = batch(n=1)
    lin = make_schedule("linear", 100)
    out = noise_images(images, [lin, lin.copy(), make_schedule("cosine", 100)], [10, 50, 99], seed=0)
    np.testing.assert_array_equal(out[0:3], out[3:6])
    assert (out[0:3] != out[6:9]).any()


def test_seeds():
    images = batch(n=2)
    betas = [make_schedule("linear", 1000)]
    a = noise_images(images, betas, [500], seed=0)
    np.testing.assert_array_equal(a, noise_images(images, betas, [500], seed=0))
    b = noise_images(images, betas, [500], seed=1)
    assert (a != b).mean() > 0.5
    # image i's noise depends on (seed, i) only, not on the other images of the batch
    other = images.copy()
    other[0] = 255 - other[0]
    np.testing.assert_array_equal(noise_images(other, betas, [500], seed=0)[1], a[1])
    with pytest.raises(DtoolsError, match="--seed"):
        image_eps((1, 2, 2), -1, 0)


def test_grey_images_stay_grey():
    out = noise_images(batch(n=1, c=1), [make_schedule("linear", 1000)], [None, 10], seed=0)
    assert out.shape == (2, 5, 5, 1)


def test_forward_statistics():
    """Over many draws of ε (from image_eps, the command's generator), x_t has mean sqrt(ᾱ_t) x0 and
    variance 1-ᾱ_t per pixel, before any clipping or quantization."""
    m = 4000
    x0 = torch.linspace(-1, 1, 3 * 4 * 4, dtype=torch.float64).reshape(1, 3, 4, 4)
    eps = torch.stack([image_eps((3, 4, 4), 7, i) for i in range(m)])  # (M, 3, 4, 4)
    sched = Schedule.from_betas(make_schedule("cosine", 1000))
    ts = [0, 100, 500, 999]
    x = forward_noise(x0.expand(m, -1, -1, -1), [sched], ts, eps)[:, 0]  # (M, K, 3, 4, 4)
    ab = sched.alphas_cumprod[ts].reshape(-1, 1, 1, 1)  # (K, 1, 1, 1)
    mean, var = x.mean(0), x.var(0)
    mean_tol = 5 * torch.sqrt((1 - ab) / m)  # 5 standard errors of the mean
    var_tol = 5 * (1 - ab) * np.sqrt(2 / (m - 1))  # 5 standard errors of a Gaussian sample variance
    assert ((mean - ab.sqrt() * x0[0]).abs() <= mean_tol).all()
    assert ((var - (1 - ab)).abs() <= var_tol).all()
    # and the noise itself is standard normal, uncorrelated between pixels
    flat = eps.reshape(m, -1)
    assert abs(flat.mean()) < 5 / np.sqrt(flat.numel())
    assert abs(flat.var() - 1) < 5 * np.sqrt(2 / flat.numel())
    corr = torch.corrcoef(flat.T)
    assert (corr - torch.eye(48, dtype=corr.dtype)).abs().max() < 5 / np.sqrt(m)


def test_quantize_rounds_and_clips():
    from dtools.images import to_uint8  # noise's x_t (float64) is quantized in float64

    x = torch.tensor([-2.0, -1.0, -1 + 0.6 / 127.5, 0.0, 1.0, 3.0], dtype=torch.float64).reshape(1, 1, 1, 6)
    np.testing.assert_array_equal(to_uint8(x)[0, 0, :, 0], [0, 0, 1, 128, 255, 255])


def test_bad_inputs():
    betas = [make_schedule("linear", 100)]
    with pytest.raises(DtoolsError, match="uint8 batch"):
        noise_images(batch().astype(np.float32), betas, [0])
    with pytest.raises(DtoolsError, match="at least one schedule"):
        noise_images(batch(), [], [0])
    with pytest.raises(DtoolsError, match="at least one timestep"):
        noise_images(batch(), betas, [])
    with pytest.raises(DtoolsError, match="out of range for schedule lin100"):
        noise_images(batch(), betas, [0, 100], names=["lin100"])
    with pytest.raises(DtoolsError, match="must lie in"):
        noise_images(batch(), [np.array([0.1, 1.5])], [0])
