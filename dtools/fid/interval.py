"""How sure a FID is: an interval from repeated half-subsets of the samples, each scored in
milliseconds instead of a 2048x2048 matrix square root.

**The interval.** FID of n samples varies with the draw of the samples. Its spread is estimated by
half-sampling: B random subsets of n/2 samples, drawn without replacement, are scored; for a smooth
statistic the spread of the half-sample scores around their mean matches the spread of the full score
(a half-sample mean varies around the full mean by σ²(2/n − 1/n) = σ²/n, the variance of the full
mean itself). The interval is FID + the central percentiles of (half-sample FID − their mean). FID is
not quite smooth at small n, and the interval comes out conservative: 1.3 to 1.5 times the real
spread on emoji Inception features (bench/bench_fid_interval.py). The usual bootstrap (resampling n
with replacement) is not used: it repeats about a third of the images, and repeats alone raise FID,
so its percentile interval misses the expected score altogether; docs/fid.md has the measurements.

**The fast score.** FID = |μ_r − μ_s|² + tr Σ_r + tr Σ_s − 2 tr (Σ_r Σ_s)^½ (Heusel et al. 2017). The
reference is fixed, so its square root A = Σ_r^½ is computed once (by one `eigh` of Σ_r, or from the
Gram matrix of fewer than d reference features). Σ_r Σ_s has the eigenvalues of the symmetric
positive semi-definite A Σ_s A, so tr (Σ_r Σ_s)^½ = Σ_i √λ_i(A Σ_s A), without torch-fidelity's general
(non-symmetric) eigendecomposition. With the features centred once (X0 = X − x̄, Y0 = X0 A), a subset
with 0/1 weights w of size m = Σ w has A Σ_w A = Zᵀ Z, Z = diag(√w) (Y0 − 1 ȳ_wᵀ) / √(m − 1),
ȳ_w = Y0ᵀ w / m. When there are at most d samples (fewer than 2,048 images), the nonzero eigenvalues
of Zᵀ Z are those of the small Gram matrix Z Zᵀ, built from G = Y0 Y0ᵀ (computed once) in O(m²): no
product over the feature dimensions per subset. Otherwise A Σ_w A is formed (d x d). The mean and
trace terms come from K = X0 X0ᵀ the same way. Float64 throughout.

Every sample set of the same size is split with the same subsets (a fixed seed), so two sets drawn
with the same seeds (`dtools sweep`) are compared subset by subset: `compare` tells whether their
scores differ beyond the interval of their difference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dtools.errors import DtoolsError

SUBSETS = 200  # half-subsets per interval
SEED = 2020  # fixed, so intervals are reproducible and paired across sample sets of the same size
LEVEL = 0.95
MIN_SAMPLES = 8  # half-subsets of 4 images: any fewer and the interval means nothing


def sqrt_psd(sigma: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric positive semi-definite matrix (negative rounding
    noise in its eigenvalues is clipped to 0)."""
    evals, evecs = np.linalg.eigh((sigma + sigma.T) / 2)
    return (evecs * np.sqrt(np.clip(evals, 0.0, None))) @ evecs.T


@dataclass
class Prepared:
    """One sample set, ready to be scored on any subset."""

    n: int
    k: np.ndarray  # (n, n) X0 X0ᵀ, X0 = X − x̄
    g: np.ndarray | None  # (n, n) Y0 Y0ᵀ, Y0 = X0 A; only when n <= d
    y0: np.ndarray  # (n, d)
    xd: np.ndarray  # (n,) X0 · (μ_r − x̄)
    dd: float  # |μ_r − x̄|²


def sqrt_cov_from_features(features) -> np.ndarray:
    """Σ^½ of the sample covariance of r feature rows, from the r x r Gram matrix: with B = X0 / √(r − 1)
    = V S Wᵀ, Σ = Bᵀ B and Σ^½ = W S Wᵀ = Bᵀ V S⁻¹ Vᵀ B. Cheaper than `sqrt_psd` when r < d."""
    x = np.asarray(features, dtype=np.float64)
    b = (x - x.mean(axis=0)) / np.sqrt(x.shape[0] - 1)
    evals, v = np.linalg.eigh(b @ b.T)
    keep = evals > evals.max() * 1e-12  # the nonzero part: rank r − 1 at most
    bv = b.T @ v[:, keep]  # (d, rank) Bᵀ V
    return (bv / np.sqrt(evals[keep])) @ bv.T  # Bᵀ V S⁻¹ Vᵀ B


class FixedReferenceFid:
    """FID of sample features against one fixed reference (μ_r, Σ_r), fast enough to score many
    subsets. `fid(features)` equals torch-fidelity's `fid_statistics_to_metric` (tests: 1e-6 relative).
    Given the reference's features too, and fewer of them than dimensions, Σ_r^½ comes from their
    Gram matrix (`sqrt_cov_from_features`) instead of a d x d eigendecomposition."""

    def __init__(self, mu_r: np.ndarray, sigma_r: np.ndarray, features=None):
        self.mu_r = np.asarray(mu_r, dtype=np.float64)
        self.dim = self.mu_r.shape[0]
        sigma_r = np.asarray(sigma_r, dtype=np.float64)
        if sigma_r.shape != (self.dim, self.dim):
            raise DtoolsError(f"reference covariance of shape {sigma_r.shape}, expected {(self.dim,) * 2}")
        if features is not None and len(features) < self.dim:
            self.sqrt_r = sqrt_cov_from_features(features)
        else:
            self.sqrt_r = sqrt_psd(sigma_r)  # A = Σ_r^½: the one expensive step (seconds at d = 2048)
        self.trace_r = float(np.trace(sigma_r))

    def prepare(self, features) -> Prepared:
        x = np.asarray(features, dtype=np.float64)  # (n, d)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise DtoolsError(f"features of shape {list(x.shape)}, expected [n, {self.dim}]")
        if x.shape[0] < 2:
            raise DtoolsError(f"FID needs at least 2 samples (a covariance), got {x.shape[0]}")
        center = x.mean(axis=0)
        x0 = x - center  # centred once, so that the Gram matrices below lose no precision
        y0 = x0 @ self.sqrt_r
        d = self.mu_r - center
        g = y0 @ y0.T if x.shape[0] <= self.dim else None
        return Prepared(x.shape[0], x0 @ x0.T, g, y0, x0 @ d, float(d @ d))

    def fid(self, features) -> float:
        return self.score(self.prepare(features))

    def score(self, s: Prepared, weights: np.ndarray | None = None) -> float:
        """FID of the prepared samples, or of the subset where `weights` (n,) is 1 (0 elsewhere)."""
        w = np.ones(s.n) if weights is None else np.asarray(weights, dtype=np.float64)
        idx = np.flatnonzero(w > 0)  # the members: every matrix below is (members x members)
        w = w[idx]
        m = float(w.sum())
        p = w / m
        k = s.k[np.ix_(idx, idx)]
        mean_sq = float(p @ k @ p)  # |μ_w − x̄|²
        mean_term = s.dd - 2.0 * float(s.xd[idx] @ p) + mean_sq  # |μ_r − μ_w|²
        trace_s = (float(w @ np.diag(k)) - m * mean_sq) / (m - 1)  # tr Σ_w
        if s.g is not None:  # the Gram matrix: at most n <= d rows
            g = s.g[np.ix_(idx, idx)]
            gp = g @ p
            c = g - gp[:, None] - gp[None, :] + float(p @ gp)  # centred Gram
            root_w = np.sqrt(w)
            mat = c * root_w[:, None] * root_w[None, :] / (m - 1)
        else:  # more samples than dimensions: A Σ_w A itself, (d, d)
            y = s.y0[idx]
            yc = y - y.T @ p
            mat = (yc.T * w) @ yc / (m - 1)
        evals = np.linalg.eigvalsh((mat + mat.T) / 2)
        trace_sqrt = float(np.sqrt(np.clip(evals, 0.0, None)).sum())
        return mean_term + self.trace_r + trace_s - 2.0 * trace_sqrt


def half_subsets(n: int, count: int = SUBSETS, seed: int = SEED) -> np.ndarray:
    """`count` random subsets of n // 2 of n items, as 0/1 weights (count, n): the same for every call
    with the same n, count and seed."""
    if count < 2:
        raise DtoolsError(f"an interval needs at least 2 subsets, got {count}")
    if n < MIN_SAMPLES:
        raise DtoolsError(f"an interval for FID needs at least {MIN_SAMPLES} samples, got {n}")
    rng = np.random.default_rng(seed)
    weights = np.zeros((count, n))
    for row in weights:
        row[rng.permutation(n)[: n // 2]] = 1.0
    return weights


@dataclass
class Interval:
    """A FID, its interval, and the half-subset scores it came from (for paired comparisons)."""

    fid: float
    low: float
    high: float
    subsets: np.ndarray  # (count,) FID of each half-subset
    samples: int  # n: subsets are paired only between sets of the same size
    level: float = LEVEL

    def to_dict(self) -> dict:
        return {"low": self.low, "high": self.high, "level": self.level, "subsets": len(self.subsets),
                "method": "half-sampling"}


def centred_percentiles(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The central `level` percentiles of `values` minus their mean."""
    tail = (1.0 - level) / 2 * 100
    lo, hi = np.percentile(values - values.mean(), [tail, 100 - tail])
    return float(lo), float(hi)


def fid_interval(
    scorer: FixedReferenceFid, features, count: int = SUBSETS, level: float = LEVEL, seed: int = SEED
) -> Interval:
    """FID of `features` and its `level` interval from `count` half-subsets (see module doc)."""
    prep = scorer.prepare(features)
    fid = scorer.score(prep)
    subsets = np.array([scorer.score(prep, w) for w in half_subsets(prep.n, count, seed)])
    lo, hi = centred_percentiles(subsets, level)
    return Interval(fid, fid + lo, fid + hi, subsets, prep.n, level)


def compare(a: Interval, b: Interval) -> tuple[float, float, bool]:
    """The interval of FID(a) − FID(b) from their paired half-subsets (same sizes and seed), and whether
    it excludes 0, i.e. whether the two scores differ beyond their uncertainty."""
    if len(a.subsets) != len(b.subsets) or a.samples != b.samples:
        raise DtoolsError("paired intervals need sample sets of the same size, split into the same subsets")
    diff = a.fid - b.fid
    lo, hi = centred_percentiles(a.subsets - b.subsets, a.level)
    return diff + lo, diff + hi, diff + lo > 0 or diff + hi < 0
