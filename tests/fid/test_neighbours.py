"""dtools.fid.neighbours: the chunked search equals brute force, copies have distance 0, mirror images
and duplicates are handled, and the pixel distance is the RMS difference of [0, 1] pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dtools.errors import DtoolsError
from dtools.fid import neighbours
from dtools.fid.neighbours import distinct, mirror, nearest_two, pixel_vectors


def _brute(q: torch.Tensor, k: torch.Tensor, km: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    exact = "donot_use_mm_for_euclid_dist"
    d = torch.cdist(q.double(), k.double(), compute_mode=exact)
    if km is not None:
        d = torch.minimum(d, torch.cdist(q.double(), km.double(), compute_mode=exact))
    dist, idx = d.topk(2, dim=1, largest=False)
    return idx.numpy(), dist.numpy()


@pytest.mark.parametrize("with_mirror", [False, True])
def test_chunked_search_equals_brute_force(monkeypatch, with_mirror):
    monkeypatch.setattr(neighbours, "BLOCK_ELEMENTS", 700)  # blocks of a few keys: many chunks
    monkeypatch.setattr(neighbours, "QUERY_BLOCK", 16)
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (300, 6, 6, 3), dtype=np.uint8)
    samples = rng.integers(0, 256, (50, 6, 6, 3), dtype=np.uint8)
    samples[:3] = train[[5, 150, 299]]
    samples[3] = train[42, :, ::-1]  # a mirrored copy
    q, k = pixel_vectors(samples), pixel_vectors(train)
    km = pixel_vectors(mirror(train)) if with_mirror else None
    found = nearest_two(q, k, km)
    idx, dist = _brute(q, k, km)
    assert np.array_equal(found.index, idx)
    assert np.allclose(found.distance, dist, rtol=1e-12, atol=1e-12)
    assert (found.index[:3, 0] == [5, 150, 299]).all() and (found.distance[:3, 0] == 0).all()
    assert (found.ratio[:3] == 0).all() and (found.ratio[4:] > 0.8).all()  # random pixels: no near copy
    if with_mirror:
        assert found.index[3, 0] == 42 and found.distance[3, 0] == 0 and found.mirrored[3, 0]
    else:
        assert found.distance[3, 0] > 0.2


def test_pixel_distance_is_rms_of_unit_pixels():
    black, white = np.zeros((1, 4, 5, 3), np.uint8), np.full((1, 4, 5, 3), 255, np.uint8)
    half = np.full((1, 4, 5, 3), 51, np.uint8)  # 0.2
    keys = pixel_vectors(np.concatenate([white, half]))
    found = nearest_two(pixel_vectors(black), keys)
    assert found.index[0].tolist() == [1, 0]
    assert found.distance[0] == pytest.approx([0.2, 1.0], abs=1e-7)


def test_distinct_drops_duplicates_and_mirror_pairs():
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
    images = np.stack([a, b, a, a[:, ::-1], b])
    assert distinct(images, mirrored=False).tolist() == [0, 1, 3]
    assert distinct(images, mirrored=True).tolist() == [0, 1]


def test_ratio_of_a_tie_at_zero_is_one_and_errors_are_one_line():
    found = neighbours.Neighbours(np.array([[0, 1]]), np.array([[0.0, 0.0]]), np.zeros((1, 2), bool))
    assert found.ratio.tolist() == [1.0]
    with pytest.raises(DtoolsError, match="at least 2 distinct training images"):
        nearest_two(torch.zeros(3, 4), torch.zeros(1, 4))
    with pytest.raises(DtoolsError, match="differ in size"):
        nearest_two(torch.zeros(3, 4), torch.zeros(5, 6))
