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
