"""The learning-rate schedule: warm-up, then a decay that ends with the run."""

from __future__ import annotations

import pytest

from dtools.train.lr import DECAYS, factor


def test_warmup_then_cosine_to_the_end():
    assert factor(0.0, 0.1) == pytest.approx(1e-3)
    assert factor(0.05, 0.1) == pytest.approx(0.5)
    assert factor(0.1, 0.1) == pytest.approx(1.0)
    assert factor(0.55, 0.1) == pytest.approx(0.5)  # halfway through the decay
    assert factor(1.0, 0.1) == pytest.approx(0.0, abs=1e-12)
    assert factor(2.0, 0.1) == factor(1.0, 0.1)  # past the end (a run over its budget) stays there
    assert factor(1.0, 0.1, floor=0.1) == pytest.approx(0.1)


@pytest.mark.parametrize("decay", list(DECAYS))
def test_every_decay_starts_at_one_and_never_rises(decay):
    values = [factor(i / 100, 0.05, decay) for i in range(5, 101)]
    assert values[0] == pytest.approx(1.0)
    assert all(b <= a + 1e-12 for a, b in zip(values, values[1:], strict=False))


def test_wsd_holds_the_peak_then_cools_down_over_the_last_fifth():
    assert factor(0.0, 0.0, "wsd") == factor(0.79, 0.0, "wsd") == 1.0
    assert factor(0.8, 0.0, "wsd") == pytest.approx(1.0)
    assert factor(0.9, 0.0, "wsd") == pytest.approx(0.5)
    assert factor(1.0, 0.0, "wsd") == pytest.approx(0.0, abs=1e-12)
    assert factor(0.1 + 0.9 * 0.9, 0.1, "wsd") == pytest.approx(0.5)  # the fifth of what follows warm-up


def test_no_warmup():
    assert factor(0.0, 0.0) == pytest.approx(1.0)
    assert factor(0.0, 0.0, "constant") == factor(0.7, 0.0, "constant") == 1.0
