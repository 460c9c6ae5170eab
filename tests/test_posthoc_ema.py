"""Post-hoc EMA's maths (dtools.posthoc_ema): the least-squares weights of snapshots that make any
power-function EMA, checked against EMAs actually run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dtools.ema import EMA, power_gamma
from dtools.posthoc_ema import (
    TRACKED,
    parse_snapshot_name,
    profile_products,
    snapshot_due,
    snapshot_name,
    solve,
)


def test_inner_product_matches_numerical_integration():
    """<p_a, p_b> in closed form against a Riemann sum of the two profiles."""
    pairs = [((0.05, 300), (0.1, 1000)), ((0.1, 1000), (0.1, 1000)), ((0.2, 50), (0.05, 80))]
    for (sa, ta), (sb, tb) in pairs:
        ga, gb = power_gamma(sa), power_gamma(sb)
        tau = np.linspace(0, min(ta, tb), 400_001)[1:]
        pa = (ga + 1) * tau**ga / ta ** (ga + 1)
        pb = (gb + 1) * tau**gb / tb ** (gb + 1)
        numeric = np.sum(pa * pb) * (tau[1] - tau[0])
        assert float(profile_products(ga, ta, gb, tb)) == pytest.approx(numeric, rel=1e-3)


def test_a_tracked_snapshot_is_made_by_itself():
    snaps = [(s, k * 100) for k in range(1, 9) for s in TRACKED]
    for i, (s, t) in enumerate(snaps):
        fit = solve(snaps, s, t) if t == 800 else None
        if fit is not None:
            assert fit.error < 1e-9
            assert fit.coefficients[i] == pytest.approx(1.0, abs=1e-6)
            assert np.delete(fit.coefficients, i) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("target", [0.07, 0.13, 0.2])
def test_reconstruction_matches_an_ema_that_ran(target):
    """A random walk of weights, EMAs of the two tracked widths snapshotted 16 times: the weighted sum of
    the snapshots is the EMA of another width that ran alongside, within a small part of the walk's
    spread."""
    steps = 1600
    net = torch.nn.Linear(64, 1, bias=False)
    tracked = [EMA(net, sigma_rel=s) for s in TRACKED]
    truth = EMA(net, sigma_rel=target)
    gen = torch.Generator().manual_seed(0)
    saved, snaps = [], []
    with torch.no_grad():
        for t in range(1, steps + 1):
            net.weight.add_(torch.randn(net.weight.shape, generator=gen))
            for e in (*tracked, truth):
                e.update(net)
            if t % 100 == 0:
                for e in tracked:
                    saved.append(e.module.weight.clone().double())
                    snaps.append((e.sigma_rel, t))
    fit = solve(snaps, target, steps)
    assert fit.error < 0.01
    made = sum(float(x) * w for x, w in zip(fit.coefficients, saved, strict=True))
    true = truth.module.weight.double()
    # the walk has moved √1600 = 40 per weight; the reconstruction is within a small part of that
    assert float((made - true).abs().mean()) < 0.03 * 40
    # and far closer than either tracked EMA is to it
    assert float((made - true).abs().mean()) < 0.5 * min(float((s - true).abs().mean()) for s in saved[-2:])


def test_a_width_beyond_the_snapshots_says_so():
    snaps = [(s, k * 100) for k in range(1, 5) for s in TRACKED]
    assert solve(snaps, 0.1, 400).error < 1e-9
    assert solve(snaps, 0.25, 400).error > 0.01  # wider than four snapshots reach
    assert solve(snaps, 0.02, 400).error > 0.001  # narrower than the narrowest tracked
    with pytest.raises(ValueError):
        solve(snaps, 0.5, 400)
    with pytest.raises(ValueError):
        solve([], 0.1, 400)


def test_names_and_schedule():
    assert snapshot_name(1234, 0.05) == "step_0001234-0.050.safetensors"
    assert parse_snapshot_name("step_0001234-0.050.safetensors") == (1234, 0.05)
    assert parse_snapshot_name("step_12-0.05.safetensors") is None
    assert parse_snapshot_name(".step_0001234-0.050.safetensors.1.abcdefgh.tmp") is None
    last, taken = 0.0, []
    for i in range(1, 101):  # 4 snapshots over a run of 100 steps: at 25, 50, 75, 100
        if snapshot_due(i / 100, last, 4):
            last = i / 100
            taken.append(i)
    assert taken == [25, 50, 75, 100]
    # the run made twice as long: its last snapshot (step 100) is now half-way; next at 150 and 200
    last, taken = 100 / 200, []
    for i in range(101, 201):
        if snapshot_due(i / 200, last, 4):
            last = i / 200
            taken.append(i)
    assert taken == [150, 200]
