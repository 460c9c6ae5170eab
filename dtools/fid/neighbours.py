"""Nearest neighbours for the memorisation audit: the two closest training images of every sample, in
any vector space (flattened pixels, Inception features), found with chunked matrix products.

Squared distances come from |q|² − 2 q·k + |k|² in float32 over blocks of keys (and queries), keeping
a few candidates per query; the candidates' distances are then recomputed exactly in float64 and the
best two kept, so an exact copy has distance 0, not float32 rounding noise. With `mirror`, the
distance to a training image is the smaller of the distances to it and to its left-right mirror
image (`dtools train` flips by default, so a mirrored copy is a copy).

The pixel distance (`pixel_vectors`) is the root-mean-square difference of [0, 1] pixel values at one
resolution: ||x − y||₂ / √(H·W·C), 0 for identical images, 1 for black against white.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from dtools.errors import DtoolsError

CANDIDATES = 4  # float32 candidates per query, re-ranked exactly in float64
BLOCK_ELEMENTS = 1 << 24  # entries of one float32 block of the distance matrix (64 MB)
QUERY_BLOCK = 1024  # queries per block


@dataclass
class Neighbours:
    """For each query: its two nearest keys, their distances (float64) and whether each matched
    the key's mirror image."""

    index: np.ndarray  # (Q, 2) int64: nearest, second nearest
    distance: np.ndarray  # (Q, 2) float64
    mirrored: np.ndarray  # (Q, 2) bool

    @property
    def ratio(self) -> np.ndarray:
        """Nearest over second-nearest distance, (Q,); 0 for an exact copy of a distinct key."""
        d1, d2 = self.distance[:, 0], self.distance[:, 1]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(d2 > 0, d1 / d2, 1.0)


def _squared_distances(q: torch.Tensor, q_sq: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """(Q, K) squared distances in float32, clamped at 0 (rounding can make them slightly negative)."""
    d2 = q_sq[:, None] - 2.0 * (q @ keys.T) + (keys * keys).sum(1)[None, :]
    return d2.clamp_min_(0.0)


def nearest_two(
    queries: torch.Tensor, keys: torch.Tensor, keys_mirror: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
) -> Neighbours:
    """The two nearest rows of `keys` (K, D) for each row of `queries` (Q, D); with `keys_mirror`
    (K, D, the mirrored keys), a key's distance is the smaller of the two."""
    if keys.shape[0] < 2:
        raise DtoolsError("the nearest/second-nearest ratio needs at least 2 distinct training images, "
                          f"got {keys.shape[0]}")
    if queries.shape[1] != keys.shape[1]:
        raise DtoolsError(f"samples and training images differ in size ({queries.shape[1]} vs "
                          f"{keys.shape[1]} values)")
    n_q, n_k = queries.shape[0], keys.shape[0]
    take = min(CANDIDATES, n_k)
    cand = torch.empty(n_q, take, dtype=torch.int64)
    q_rows = min(n_q, QUERY_BLOCK)
    k_rows = max(1, BLOCK_ELEMENTS // q_rows)  # a (q_rows, k_rows) float32 block of distances
    for qs in range(0, n_q, q_rows):
        q = queries[qs:qs + q_rows].to(device, torch.float32)
        q_sq = (q * q).sum(1)
        best_d = torch.empty(len(q), 0, device=device)
        best_i = torch.empty(len(q), 0, dtype=torch.int64, device=device)
        for ks in range(0, n_k, k_rows):
            block = keys[ks:ks + k_rows].to(device, torch.float32)
            d2 = _squared_distances(q, q_sq, block)
            if keys_mirror is not None:
                flipped = keys_mirror[ks:ks + k_rows].to(device, torch.float32)
                d2 = torch.minimum(d2, _squared_distances(q, q_sq, flipped))
            idx = torch.arange(ks, ks + len(block), device=device).expand(len(q), -1)
            best_d, pos = torch.cat([best_d, d2], 1).topk(take, dim=1, largest=False)
            best_i = torch.cat([best_i, idx], 1).gather(1, pos)
        cand[qs:qs + len(q)] = best_i.cpu()
    return _refine(queries, keys, keys_mirror, cand)


def _refine(queries: torch.Tensor, keys: torch.Tensor, keys_mirror: torch.Tensor | None,
            cand: torch.Tensor) -> Neighbours:
    """Exact float64 distances to each query's candidates; the best two, in order."""
    n_q, take = cand.shape
    dist = torch.empty(n_q, take, dtype=torch.float64)
    mirrored = torch.zeros(n_q, take, dtype=torch.bool)
    rows = max(1, BLOCK_ELEMENTS // 8 // max(take * queries.shape[1], 1))
    for s in range(0, n_q, rows):
        q = queries[s:s + rows].double()[:, None, :]  # (B, 1, D)
        c = cand[s:s + rows]
        d = (q - keys[c].double()).norm(dim=2)  # (B, take)
        if keys_mirror is not None:
            dm = (q - keys_mirror[c].double()).norm(dim=2)
            mirrored[s:s + rows] = dm < d
            d = torch.minimum(d, dm)
        dist[s:s + rows] = d
    order = dist.argsort(dim=1, stable=True)[:, :2]
    return Neighbours(
        index=cand.gather(1, order).numpy(),
        distance=dist.gather(1, order).numpy(),
        mirrored=mirrored.gather(1, order).numpy(),
    )


def pixel_vectors(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, C] -> (N, H*W*C) float32 pixels in [0, 1], scaled by 1/√(H·W·C) so that
    Euclidean distances are root-mean-square pixel differences."""
    n = images.shape[0]
    scale = 1.0 / (255.0 * math.sqrt(images[0].size))
    return torch.from_numpy(images.reshape(n, -1)).float() * scale


def mirror(images: np.ndarray) -> np.ndarray:
    """Each image [N, H, W, C] flipped left to right."""
    return np.ascontiguousarray(images[:, :, ::-1])


def distinct(images: np.ndarray, mirrored: bool) -> np.ndarray:
    """Indices of the first of each set of identical images (identical up to a mirror image when
    `mirrored`), in order. Duplicates would make the second-nearest distance 0 for a copy of one."""
    seen: set[bytes] = set()
    keep = []
    for i, img in enumerate(images):
        key = img.tobytes()
        if mirrored:
            key = min(key, img[:, ::-1].tobytes())
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return np.asarray(keep, dtype=np.int64)
