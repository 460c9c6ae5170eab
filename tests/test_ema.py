"""The EMA of the weights that `sample` uses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dtools.ema import EMA


def test_ema_update_and_warmup():
    net = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(0.0)
    ema = EMA(net, decay=0.9)
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema.update(net)
    assert ema.module.weight.flatten().tolist() == pytest.approx([0.1, 0.1])
    warm = EMA(net, decay=0.999, warmup=True)
    assert warm.current_decay() == pytest.approx(0.1)  # (1+0)/(10+0)
    warm.num_updates = 10_000
    assert warm.current_decay() == 0.999
    assert all(not p.requires_grad for p in ema.module.parameters())


def test_power_ema_gamma_matches_edm2():
    from dtools.ema import power_gamma, power_sigma_rel

    # Karras et al. 2024 (EDM2), section 3.1: sigma_rel 0.05 and 0.10 are gamma 16.97 and 6.94
    assert power_gamma(0.05) == pytest.approx(16.97, abs=0.01)
    assert power_gamma(0.10) == pytest.approx(6.94, abs=0.01)
    for s in (0.02, 0.05, 0.1, 0.25):
        assert power_sigma_rel(power_gamma(s)) == pytest.approx(s, rel=1e-9)
    with pytest.raises(ValueError):
        power_gamma(0.6)


@pytest.mark.parametrize("steps", [200, 2000])
def test_power_ema_averages_a_fixed_fraction_of_the_run(steps):
    """On a weight that grows linearly with the step, the power EMA sits where a t^γ-weighted average of
    the whole run sits, (γ+1)/(γ+2) of the way along, whatever the run's length."""
    from dtools.ema import power_gamma

    net = torch.nn.Linear(1, 1, bias=False)
    ema = EMA(net, sigma_rel=0.1)
    assert ema.current_decay() == 0.0  # the first update copies the weights
    with torch.no_grad():
        for t in range(1, steps + 1):
            net.weight.fill_(float(t))
            ema.update(net)
    g = power_gamma(0.1)
    assert float(ema.module.weight) / steps == pytest.approx((g + 1) / (g + 2), rel=0.01)


def test_the_widest_power_ema_is_the_largest_sigma_rel_and_wider_is_refused():
    """σ_rel(γ) peaks at γ = (√5 - 3)/2 with σ_rel ≈ 0.3003; between that and 0.5, which dtools once
    accepted, no γ > -1 exists, and the first update raised ZeroDivisionError (0.0 ** negative)."""
    from dtools.ema import MAX_SIGMA_REL, power_gamma, power_sigma_rel

    grid = np.linspace(-0.999, 3, 40001)
    assert MAX_SIGMA_REL == pytest.approx(max(power_sigma_rel(g) for g in grid), abs=1e-7)
    assert MAX_SIGMA_REL == pytest.approx(0.30028, abs=1e-5)
    assert power_gamma(MAX_SIGMA_REL) == pytest.approx((5**0.5 - 3) / 2, abs=1e-3)
    for s in (0.25, 0.29, 0.3, MAX_SIGMA_REL):
        g = power_gamma(s)
        assert g > -1 and power_sigma_rel(g) == pytest.approx(s, rel=1e-6)
        ema = EMA(torch.nn.Linear(2, 2), sigma_rel=s)
        ema.update(torch.nn.Linear(2, 2))  # the first update: decay 0, no error
    for s in (0.3003, 0.31, 0.49):
        with pytest.raises(ValueError, match="sigma_rel"):
            power_gamma(s)
