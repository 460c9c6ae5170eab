"""dtools.fid.stats: statistics of features, and statistics files (round trip, damage, foreign files)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dtools.errors import DtoolsError
from dtools.fid.metrics import MetricsConfig, compute_metrics
from dtools.fid.stats import STATS_FORMAT, Stats, load_stats, save_stats, stats_from_features
from dtools.fid.weights import INCEPTION_SHA256


def test_fewer_than_two_images_have_no_covariance():
    with pytest.raises(DtoolsError, match="at least 2 images"):
        stats_from_features({"2048": torch.zeros(1, 2048)}, "one.npy", INCEPTION_SHA256)


def _stats(features: torch.Tensor, sha: str = INCEPTION_SHA256) -> Stats:
    return stats_from_features({"2048": features}, "test", sha)


def test_statistics_file_round_trip_gives_the_same_scores(tmp_path):
    g = torch.Generator().manual_seed(2)
    ref, gen = _stats(torch.rand(30, 2048, generator=g)), _stats(torch.rand(25, 2048, generator=g) + 0.1)
    cfg = MetricsConfig(fid=False, kid=True, prc=True)  # FID of reused stats: tests/cli/test_fid_cli.py
    direct = compute_metrics(ref, gen, cfg)
    path = tmp_path / "ref.safetensors"
    save_stats(path, ref, with_features=True)
    loaded = load_stats(path)
    assert loaded.count == 30 and loaded.from_file == str(path) and loaded.source == "test"
    assert np.array_equal(loaded.mu, ref.mu) and loaded.mu.dtype == ref.mu.dtype == np.float32
    assert np.array_equal(loaded.sigma, ref.sigma) and loaded.sigma.dtype == np.float64
    assert torch.equal(loaded.features, ref.features)
    assert compute_metrics(loaded, gen, cfg) == direct
    raw = path.read_bytes()
    assert b"pickle" not in raw and raw[8:9] == b"{"  # safetensors: a JSON header, not a pickle
    with pytest.raises(DtoolsError, match="already exists"):
        save_stats(path, ref, with_features=False)
    save_stats(path, ref, with_features=False, force=True)
    only_fid = load_stats(path)
    assert only_fid.features is None and np.array_equal(only_fid.sigma, ref.sigma)
    with pytest.raises(DtoolsError, match="holds only FID statistics"):
        compute_metrics(only_fid, gen, cfg)


def test_damaged_and_foreign_statistics_files(tmp_path):
    from dtools.tensorfile import save_tensors

    truncated = tmp_path / "cut.safetensors"
    save_stats(truncated, _stats(torch.rand(4, 2048)), with_features=True)
    truncated.write_bytes(truncated.read_bytes()[:-1000])
    with pytest.raises(DtoolsError, match="damaged"):
        load_stats(truncated)
    model = tmp_path / "model.safetensors"
    save_tensors(model, {"w": torch.zeros(2)}, {"format": "dtools.model"})
    with pytest.raises(DtoolsError, match="expected a 'dtools.fid-stats'"):
        load_stats(model)
    wrong = tmp_path / "wrong.safetensors"
    meta = {"format": STATS_FORMAT, "images": 5, "weights_sha256": "x"}
    save_tensors(wrong, {"mu": torch.zeros(3), "sigma": torch.zeros(3, 3)}, meta)
    with pytest.raises(DtoolsError, match="expected \\[2048\\]"):
        load_stats(wrong)
    nan = tmp_path / "nan.safetensors"
    tensors = {"mu": torch.full((2048,), float("nan")), "sigma": torch.eye(2048, dtype=torch.float64)}
    save_tensors(nan, tensors, {"format": STATS_FORMAT, "images": 5, "weights_sha256": "x"})
    with pytest.raises(DtoolsError, match="NaN"):
        load_stats(nan)
