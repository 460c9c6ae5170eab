"""dtools.fid.metrics: torch-fidelity's metric functions on known statistics, the checks of what can be
compared, and the small-sample warning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dtools.errors import DtoolsError
from dtools.fid.metrics import MetricsConfig, bias_warning, check_stats, compute_metrics
from dtools.fid.stats import Stats, load_stats, save_stats, stats_from_features
from dtools.fid.weights import INCEPTION_SHA256


def _stats(features: torch.Tensor, sha: str = INCEPTION_SHA256) -> Stats:
    return stats_from_features({"2048": features}, "test", sha)


def test_fid_of_shifted_gaussians_is_the_squared_mean_distance():
    ref = Stats(np.zeros(2048, np.float32), np.eye(2048), 100, "a", "x")
    gen = Stats(np.full(2048, 0.5, np.float32), np.eye(2048), 100, "b", "x")
    assert compute_metrics(ref, gen, MetricsConfig())["fid"] == pytest.approx(2048 * 0.25, rel=1e-9)
    scaled = Stats(np.zeros(2048, np.float32), 4 * np.eye(2048), 100, "c", "x")
    # Tr(S1 + S2 - 2 (S1 S2)^1/2) = 2048 * (1 + 4 - 2 * 2)
    assert compute_metrics(ref, scaled, MetricsConfig())["fid"] == pytest.approx(2048.0, rel=1e-9)


def test_kid_is_unbiased_and_grows_with_a_shift():
    g = torch.Generator().manual_seed(0)
    feats, same_law = torch.rand(40, 2048, generator=g), torch.rand(40, 2048, generator=g)
    cfg = MetricsConfig(fid=False, kid=True)
    fresh = compute_metrics(_stats(feats), _stats(same_law), cfg)
    assert abs(fresh["kid_mean"]) < 1e-3 and fresh["kid_subset_size"] == 40  # capped at the set size
    assert compute_metrics(_stats(feats), _stats(same_law + 0.1), cfg)["kid_mean"] > 0.05
    # The unbiased MMD estimator of a set against itself is negative (its diagonal is left out).
    assert compute_metrics(_stats(feats), _stats(feats), cfg)["kid_mean"] < 0


def test_precision_and_recall_of_a_set_against_itself():
    feats = torch.rand(40, 2048, generator=torch.Generator().manual_seed(0))
    out = compute_metrics(_stats(feats), _stats(feats), MetricsConfig(fid=False, prc=True))
    assert out["precision"] == 1.0 and out["recall"] == 1.0 and "fid" not in out


def test_precision_and_recall_follow_reference_and_samples():
    g = torch.Generator().manual_seed(1)
    centers = torch.zeros(3, 2048)
    centers[1, 0], centers[2, 1] = 1000.0, 1000.0
    real = centers.repeat_interleave(20, 0) + torch.randn(60, 2048, generator=g)  # three far-apart clusters
    narrow = real[:20] + 0.01 * torch.randn(20, 2048, generator=g)  # samples from one of them only
    out = compute_metrics(_stats(real), _stats(narrow), MetricsConfig(fid=False, prc=True))
    assert out["precision"] == 1.0 and out["recall"] == pytest.approx(1 / 3)


def test_statistics_of_other_weights_are_refused(tmp_path):
    g = torch.Generator().manual_seed(3)
    ref = _stats(torch.rand(10, 2048, generator=g), sha="0" * 64)
    gen = _stats(torch.rand(10, 2048, generator=g))
    with pytest.raises(DtoolsError, match="different Inception weights"):
        compute_metrics(ref, gen, MetricsConfig())
    save_stats(tmp_path / "old.safetensors", ref, with_features=False)
    old = load_stats(tmp_path / "old.safetensors")
    with pytest.raises(DtoolsError, match="other Inception weights.*recompute it with --save-stats"):
        check_stats(old, MetricsConfig(), INCEPTION_SHA256)


def test_bias_warning_below_2048_images():
    assert "from 100 images is biased" in bias_warning([100, 5000])
    assert bias_warning([2048, 2048]) is None
