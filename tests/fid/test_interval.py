"""dtools.fid.interval on synthetic features: the fast FID equals torch-fidelity's, subsets score as
their own sets, and the half-sampling interval is reproducible, calibrated, paired, and narrows as the
number of samples grows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric

from dtools.errors import DtoolsError
from dtools.fid.interval import (
    FixedReferenceFid,
    compare,
    fid_interval,
    half_subsets,
    sqrt_cov_from_features,
    sqrt_psd,
)


def _gaussian(rng, n: int, d: int, mix: np.ndarray, shift: float = 0.0) -> np.ndarray:
    return (rng.standard_normal((n, mix.shape[0])) @ mix + 1.0 + shift).astype(np.float32)


def _fidelity(ref: np.ndarray, smp: np.ndarray) -> float:
    """torch-fidelity's FID of two feature sets, as `dtools fid` computes it."""
    sr = fid_features_to_statistics(torch.from_numpy(ref))
    ss = fid_features_to_statistics(torch.from_numpy(smp))
    return fid_statistics_to_metric(ss, sr, verbose=False)[KEY_METRIC_FID]


@pytest.mark.parametrize(("d", "n"), [(64, 200), (64, 40), (256, 100)])  # d-path; Gram path (n <= d)
def test_fast_fid_equals_torch_fidelity(d, n):
    rng = np.random.default_rng(d + n)
    mix = rng.standard_normal((d, d)) * 0.2
    ref, smp = _gaussian(rng, 300, d, mix), _gaussian(rng, n, d, mix * 1.2, shift=0.1)
    sr = fid_features_to_statistics(torch.from_numpy(ref))
    fast = FixedReferenceFid(sr["mu"], sr["sigma"]).fid(smp)
    assert fast == pytest.approx(_fidelity(ref, smp), rel=1e-6)


def test_a_subset_scores_as_the_set_it_is():
    rng = np.random.default_rng(0)
    mix = rng.standard_normal((32, 32)) * 0.3
    ref, smp = _gaussian(rng, 200, 32, mix), _gaussian(rng, 60, 32, mix, shift=0.2)
    sr = fid_features_to_statistics(torch.from_numpy(ref))
    scorer = FixedReferenceFid(sr["mu"], sr["sigma"])
    w = half_subsets(60, 3, seed=1)[2]
    assert w.sum() == 30 and set(np.unique(w)) == {0.0, 1.0}
    assert scorer.score(scorer.prepare(smp), w) == pytest.approx(_fidelity(ref, smp[w > 0]), rel=1e-6)


def test_sqrt_psd_squares_back_and_ignores_rounding_below_zero():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 8))
    sigma = np.cov(x, rowvar=False)  # rank 4 of 8: eigenvalues ~0, some slightly negative
    root = sqrt_psd(sigma)
    assert np.allclose(root @ root, sigma, atol=1e-10) and np.isfinite(root).all()


@pytest.mark.parametrize(("r", "d"), [(5, 8), (30, 64)])
def test_sqrt_from_few_reference_features_equals_the_eigendecomposition(r, d):
    x = np.random.default_rng(r).standard_normal((r, d)) * np.linspace(0.1, 3, d)
    sigma = np.cov(x, rowvar=False)
    root = sqrt_cov_from_features(x)
    assert np.allclose(root @ root, sigma, atol=1e-12)
    assert np.allclose(root, sqrt_psd(sigma), atol=1e-6)
    smp = x[:4] + 0.5
    assert FixedReferenceFid(x.mean(0), sigma, x).fid(smp) == pytest.approx(
        FixedReferenceFid(x.mean(0), sigma).fid(smp), rel=1e-6)


def test_half_subsets_are_reproducible_and_refuse_tiny_sets():
    a, b = half_subsets(20, 5, seed=3), half_subsets(20, 5, seed=3)
    assert np.array_equal(a, b) and (a.sum(axis=1) == 10).all()
    assert not np.array_equal(a, half_subsets(20, 5, seed=4))
    with pytest.raises(DtoolsError, match="at least 8 samples"):
        half_subsets(7)
    with pytest.raises(DtoolsError, match="at least 2 subsets"):
        half_subsets(20, 1)


def _scorer(d: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((d, d)) * 0.4 / np.sqrt(d) * 4
    ref = _gaussian(rng, 4000, d, mix)
    return FixedReferenceFid(ref.mean(0), np.cov(ref, rowvar=False)), mix, rng


def test_interval_narrows_with_more_samples():
    scorer, mix, rng = _scorer()
    widths = {}
    for n in (100, 400):
        iv = fid_interval(scorer, _gaussian(rng, n, 32, mix * 1.1, shift=0.1), count=100)
        assert iv.low < iv.fid < iv.high
        widths[n] = iv.high - iv.low
    # 4x the samples: at most half as wide (1/sqrt(n) for the mean term, faster for the small-n bias)
    assert 0.2 < widths[400] / widths[100] < 0.6


def test_interval_matches_the_spread_of_fresh_sample_sets():
    """The half-subset spread tracks the real spread of FID over independent draws of the samples (the
    with-replacement bootstrap overstates it 2-6x on these sets; docs/fid.md)."""
    scorer, mix, rng = _scorer(seed=1)
    fids, spreads = [], []
    for _ in range(25):
        iv = fid_interval(scorer, _gaussian(rng, 100, 32, mix * 1.1, shift=0.1), count=60)
        fids.append(iv.fid)
        spreads.append(iv.subsets.std())
    assert 0.8 < np.mean(spreads) / np.std(fids) < 2.0


def test_compare_pairs_the_subsets():
    scorer, mix, rng = _scorer(seed=2)
    base = rng.standard_normal((200, 32))
    same = fid_interval(scorer, (base @ mix + 1.0).astype(np.float32), count=100)
    tweak = fid_interval(scorer, (base @ mix + 1.0 + 1e-3).astype(np.float32), count=100)
    worse = fid_interval(scorer, (base @ mix * 1.5 + 1.3).astype(np.float32), count=100)
    assert compare(same, tweak)[2] is False  # the same images, a hair apart: no difference
    low, high, differ = compare(worse, same)
    assert differ and 0 < low < worse.fid - same.fid < high
    with pytest.raises(DtoolsError, match="same size"):
        compare(same, fid_interval(scorer, (base[:100] @ mix + 1).astype(np.float32), count=100))


def test_bad_shapes_are_one_line_errors():
    scorer, _, _ = _scorer()
    with pytest.raises(DtoolsError, match=r"expected \[n, 32\]"):
        scorer.fid(np.zeros((10, 5)))
    with pytest.raises(DtoolsError, match="at least 2 samples"):
        scorer.fid(np.zeros((1, 32)))
