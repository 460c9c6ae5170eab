"""Guidance (dtools.samplers.guidance): D + w (D - D_weak) at every sampler's calls, w = 0 exactly
unguided, the σ interval, the count of network calls, and the class-conditional U-Net it needs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dtools.diffusion import Schedule, alphas_cumprod
from dtools.errors import DtoolsError
from dtools.samplers import SAMPLERS, Guidance, generate, network_calls, parse_interval
from dtools.samplers.guidance import sigma
from dtools.schedules import make_schedule
from dtools.unet import UNet, UNetConfig

T = 200
BETAS = make_schedule("cosine", T)
SCHEDULE = Schedule.from_betas(BETAS)
SHAPE = (1, 4, 4)


def toy(scale: float, calls: list | None = None):
    """A stand-in network predicting eps = scale * x_t (a denoiser of Gaussian data); `calls` records t."""

    def fn(x, t, *cond):
        if calls is not None:
            calls.append(int(t[0]))
        return scale * x

    return fn


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_guidance_weight_zero_is_the_unguided_sample_exactly(sampler):
    steps = 10 if sampler != "ddpm" else T
    weak_calls: list[int] = []
    plain = generate(toy(0.5), SCHEDULE, "eps", SHAPE, [1, 2], sampler=sampler, steps=steps)
    g = Guidance(0.0, toy(0.1, weak_calls), "eps")
    guided = generate(toy(0.5), SCHEDULE, "eps", SHAPE, [1, 2], sampler=sampler, steps=steps, guidance=g)
    assert torch.equal(plain, guided)
    assert weak_calls == []  # w = 0 never calls the weak network


def test_guidance_extrapolates_both_predictions_from_the_weak_one():
    """eps_m = 0.5 x, eps_w = 0.1 x: guided eps = 0.5 x + w (0.4 x) = (0.5 + 0.4 w) x, exactly the
    unguided sample of a network with that scale (no clipping)."""
    w = 1.5
    g = Guidance(w, toy(0.1), "eps")
    guided = generate(toy(0.5), SCHEDULE, "eps", SHAPE, [3], sampler="ddim", steps=10, guidance=g,
                      clip_x0=False)
    same = generate(toy(0.5 + 0.4 * w), SCHEDULE, "eps", SHAPE, [3], sampler="ddim", steps=10, clip_x0=False)
    torch.testing.assert_close(guided, same, rtol=1e-6, atol=1e-6)


def test_the_weak_network_may_predict_another_parameterization():
    """A guide trained for x0 against a model trained for eps: their predictions meet in x0 and eps."""
    ab = torch.from_numpy(alphas_cumprod(BETAS))

    def eps_weak_as_x0(x, t, *cond):  # the x0 a network with eps = 0.1 x implies
        a = ab[t].float()[:, None, None, None]
        return (x - (1 - a).sqrt() * 0.1 * x) / a.sqrt()

    a = generate(toy(0.5), SCHEDULE, "eps", SHAPE, [4], sampler="ddim", steps=8, clip_x0=False,
                 guidance=Guidance(2.0, toy(0.1), "eps"))
    b = generate(toy(0.5), SCHEDULE, "eps", SHAPE, [4], sampler="ddim", steps=8, clip_x0=False,
                 guidance=Guidance(2.0, eps_weak_as_x0, "x0"))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("sampler", ["ddim", "heun", "dpm++2m"])
def test_the_interval_switches_guidance_at_the_right_steps(sampler):
    lo, hi = 0.3, 4.0
    main_calls: list[int] = []
    weak_calls: list[int] = []
    g = Guidance(1.0, toy(0.1, weak_calls), "eps", interval=(lo, hi))
    generate(toy(0.5, main_calls), SCHEDULE, "eps", SHAPE, [0], sampler=sampler, steps=12, guidance=g)
    ab = alphas_cumprod(BETAS)
    expected = [t for t in main_calls if lo < sigma(float(ab[t])) <= hi]
    assert weak_calls == expected
    assert 0 < len(expected) < len(main_calls)  # the interval cuts the chain: some steps guided, some not
    calls, weak = network_calls(sampler, 12, BETAS, "trailing", g)
    assert (calls, weak) == (len(main_calls) + len(weak_calls), len(weak_calls))


def test_network_calls_without_guidance_are_the_spec_count():
    for name, spec in SAMPLERS.items():
        assert network_calls(name, 10, BETAS) == (spec.nfe(10), 0)


def test_sigma_and_the_interval_option():
    assert sigma(0.0) == math.inf
    assert sigma(0.5) == pytest.approx(1.0)
    assert parse_interval("0.28,5.42") == (0.28, 5.42)
    assert parse_interval("1, inf") == (1.0, math.inf)
    for bad in ("5,1", "1", "a,b", "-1,2"):
        with pytest.raises(DtoolsError):
            parse_interval(bad)
    with pytest.raises(DtoolsError, match="--guidance"):
        Guidance(-1.0, toy(0.1), "eps")
    with pytest.raises(DtoolsError, match="--guidance"):
        Guidance(float("nan"), toy(0.1), "eps")


CFG = UNetConfig(image_size=8, in_channels=1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                 attention_resolutions=(), num_heads=1, dropout=0.0, norm_groups=4, mid_attention=False)


def test_a_class_conditional_unet_depends_on_its_class_and_has_a_null_class():
    torch.manual_seed(0)
    net = UNet(UNetConfig(**{**CFG.__dict__, "num_classes": 3})).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.2)
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([5, 5, 5])
    with torch.no_grad():
        out = [net(x, t, torch.full((3,), c)) for c in range(4)]
        free = net(x, t)
    assert not torch.allclose(out[0], out[1])
    torch.testing.assert_close(free, out[3])  # no class given = the null class (index num_classes)
    assert net.class_embed.weight.shape == (4, 8 * 4)


def test_an_unconditional_unet_keeps_its_config_keys_and_refuses_a_class():
    net = UNet(CFG)
    assert "num_classes" not in CFG.to_dict()  # configs of unconditional networks stay as they were
    assert not hasattr(net, "class_embed")
    with pytest.raises(DtoolsError, match="unconditional"):
        net(torch.randn(1, 1, 8, 8), torch.tensor([1]), torch.tensor([0]))
    assert UNetConfig.from_dict({**CFG.to_dict(), "num_classes": 10}).num_classes == 10
    for bad in (-1, 10**9, 2.5, True):
        with pytest.raises(DtoolsError, match="num_classes"):
            UNetConfig.from_dict({**CFG.to_dict(), "num_classes": bad})


def test_guided_steps_table():
    ab = np.array([0.0, 0.1, 0.5, 0.99])
    assert [Guidance(0.0, toy(0.1), "eps").applies(float(a)) for a in ab] == [False] * 4
    g = Guidance(1.0, toy(0.1), "eps", interval=(0.5, 2.0))
    assert [g.applies(float(a)) for a in ab] == [False, False, True, False]
