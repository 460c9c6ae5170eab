"""Statistics of one set of images (mu, sigma and, when KID or precision/recall need them, the
features), and their file: a ``dtools.fid-stats`` safetensors file with a JSON header, so scoring new
samples against the same data skips the reference images."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch_fidelity.metric_fid import fid_features_to_statistics

from dtools.errors import DtoolsError
from dtools.fid.inception import FEATURE_DIM
from dtools.fileio import is_stdio
from dtools.tensorfile import load_tensors, read_header, save_tensors

STATS_FORMAT = "dtools.fid-stats"


@dataclass
class Stats:
    """What the metrics need of one set of images."""

    mu: np.ndarray  # (2048,) float32, as torch-fidelity computes it
    sigma: np.ndarray  # (2048, 2048) float64
    count: int  # number of images
    source: str
    weights_sha256: str
    features: torch.Tensor | None = None  # (N, 2048) float32, for KID and precision/recall
    logits: torch.Tensor | None = None  # (N, 1008) float32 unbiased logits, for the Inception Score
    from_file: str | None = None  # the stats file it was read from


def stats_from_features(features: dict[str, torch.Tensor], source: str, weights_sha: str) -> Stats:
    pool = features["2048"]  # (N, 2048)
    if len(pool) < 2:
        raise DtoolsError(f"{source}: FID needs at least 2 images (a covariance), got {len(pool)}")
    st = fid_features_to_statistics(pool)
    return Stats(st["mu"], st["sigma"], len(pool), source, weights_sha, pool, features.get("logits_unbiased"))


def save_stats(path: str | os.PathLike, stats: Stats, with_features: bool, force: bool = False) -> None:
    """mu, sigma (and the features when ``with_features``) as safetensors with a JSON header."""
    tensors = {"mu": torch.from_numpy(stats.mu), "sigma": torch.from_numpy(stats.sigma)}
    if with_features:
        assert stats.features is not None
        tensors["features"] = stats.features
    meta = {
        "format": STATS_FORMAT,
        "images": stats.count,
        "source": stats.source,
        "weights_sha256": stats.weights_sha256,
        "feature_layer": "2048",
        "features": with_features,
    }
    save_tensors(path, tensors, meta, force)


def is_stats_file(source: str) -> bool:
    return not is_stdio(source) and str(source).lower().endswith(".safetensors")


def load_stats(path: str | os.PathLike) -> Stats:
    """A ``dtools.fid-stats`` file; any damage or inconsistency is a one-line DtoolsError."""
    info = read_header(path, STATS_FORMAT)
    tensors, info = load_tensors(path, STATS_FORMAT)
    mu, sigma = tensors.get("mu"), tensors.get("sigma")
    count, sha = info.get("images"), info.get("weights_sha256")
    if mu is None or sigma is None or not isinstance(count, int) or not isinstance(sha, str):
        raise DtoolsError(f"{path}: incomplete FID statistics (needs mu, sigma, images, weights_sha256)")
    if tuple(mu.shape) != (FEATURE_DIM,) or tuple(sigma.shape) != (FEATURE_DIM, FEATURE_DIM):
        shapes = f"{list(mu.shape)}/{list(sigma.shape)}"
        raise DtoolsError(f"{path}: mu/sigma have shapes {shapes}, expected [2048]/[2048, 2048]")
    if count < 2:
        raise DtoolsError(f"{path}: statistics of {count} images; FID needs at least 2")
    if not (torch.isfinite(mu).all() and torch.isfinite(sigma).all()):
        raise DtoolsError(f"{path}: mu or sigma holds NaN or infinite values")
    features = tensors.get("features")
    if features is not None and tuple(features.shape) != (count, FEATURE_DIM):
        raise DtoolsError(f"{path}: features have shape {list(features.shape)}, expected [{count}, 2048]")
    source = str(info.get("source", path))
    return Stats(mu.numpy(), sigma.numpy(), count, source, sha, features, None, from_file=str(path))
