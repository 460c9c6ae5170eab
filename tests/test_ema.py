"""The EMA of the weights that `sample` uses."""

from __future__ import annotations

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
