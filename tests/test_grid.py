"""dtools.grid.make_grid: exact sizes and pixel placement, padding, scaling, labels, bad arguments."""

from __future__ import annotations

import numpy as np
import pytest

from dtools.errors import DtoolsError
from dtools.grid import make_grid, upscale


def numbered(n: int, h: int = 4, w: int = 5, c: int = 3) -> np.ndarray:
    """n images, image i filled with the value 10 + i (never the padding value)."""
    return (10 + np.arange(n, dtype=np.uint8))[:, None, None, None] * np.ones((1, h, w, c), np.uint8)


def cell(grid: np.ndarray, r: int, c: int, h: int, w: int, padding: int) -> np.ndarray:
    y, x = padding + r * (h + padding), padding + c * (w + padding)
    return grid[y : y + h, x : x + w]


@pytest.mark.parametrize(
    ("n", "nrow", "rows", "cols"),
    [
        (1, None, 1, 1), (4, None, 2, 2), (5, None, 2, 3), (10, None, 3, 4),  # nrow = ceil(sqrt(N))
        (6, 2, 3, 2), (6, 6, 1, 6), (3, 10, 1, 3),  # more per row than images: one row of N
    ],
)
def test_layout_size(n, nrow, rows, cols):
    h, w, pad = 4, 5, 2
    g = make_grid(numbered(n, h, w), nrow=nrow, padding=pad)
    assert g.dtype == np.uint8
    assert g.shape == (pad + rows * (h + pad), pad + cols * (w + pad), 3)


def test_pixel_placement_and_last_row_padding():
    h, w, pad = 4, 5, 3
    batch = numbered(5, h, w)
    g = make_grid(batch, nrow=3, padding=pad, pad_value=255)
    for i in range(5):
        r, c = divmod(i, 3)
        np.testing.assert_array_equal(cell(g, r, c, h, w, pad), batch[i])
    assert np.all(cell(g, 1, 2, h, w, pad) == 255)  # the empty slot of the last row
    # every pixel that is not inside an image is padding
    mask = np.ones(g.shape[:2], bool)
    for i in range(5):
        r, c = divmod(i, 3)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        mask[y : y + h, x : x + w] = False
    assert np.all(g[mask] == 255)
    assert mask.sum() == g.shape[0] * g.shape[1] - 5 * h * w


def test_padding_zero_is_a_plain_mosaic():
    batch = numbered(4, 2, 2)
    g = make_grid(batch, nrow=2, padding=0)
    expected = np.block([[batch[0, ..., 0], batch[1, ..., 0]], [batch[2, ..., 0], batch[3, ..., 0]]])
    np.testing.assert_array_equal(g[..., 0], expected)


def test_pad_value_and_grey_images():
    g = make_grid(numbered(2, 3, 3, c=1), padding=1, pad_value=0)
    assert g.shape == (5, 9, 1)
    assert g[0, 0, 0] == 0 and g[1, 1, 0] == 10 and g[1, 5, 0] == 11


def test_scale_is_nearest_neighbour():
    batch = np.arange(2 * 2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 2, 3)
    up = upscale(batch, 3)
    assert up.shape == (2, 6, 6, 3)
    np.testing.assert_array_equal(up[1, 3:6, 0:3], np.broadcast_to(batch[1, 1, 0], (3, 3, 3)))
    g = make_grid(batch, nrow=2, padding=1, scale=3)
    assert g.shape == (1 + 6 + 1, 1 + 2 * (6 + 1), 3)
    np.testing.assert_array_equal(cell(g, 0, 1, 6, 6, 1), up[1])
    assert upscale(batch, 1) is batch


def test_labels_add_a_left_margin_and_keep_images_intact():
    h, w, pad = 8, 8, 2
    batch = numbered(6, h, w)
    plain = make_grid(batch, nrow=3, padding=pad)
    labelled = make_grid(batch, nrow=3, padding=pad, labels=["linear", "cosine"])
    margin = labelled.shape[1] - plain.shape[1]
    assert labelled.shape[0] == plain.shape[0] and margin > 10
    np.testing.assert_array_equal(labelled[:, margin:], plain)  # the grid itself is untouched
    side = labelled[:, :margin]
    assert np.any(side < 128)  # dark ink on the white margin
    for r in range(2):  # each label sits beside its own row
        y = pad + r * (h + pad)
        assert np.any(side[y : y + h] < 128)
    # a longer label makes a wider margin; fewer labels than rows is fine
    wide = make_grid(batch, nrow=3, padding=pad, labels=["a much longer label"])
    assert wide.shape[1] > labelled.shape[1]


def test_labels_without_nrow_give_one_row_per_label():
    """`noise ... | grid --row-labels linear,cosine`: N images, k labels -> k rows of N/k."""
    batch = numbered(12, 4, 4)
    labelled = make_grid(batch, labels=["linear", "cosine"], padding=1)
    plain = make_grid(batch, nrow=6, padding=1)
    assert plain.shape == (1 + 2 * 5, 1 + 6 * 5, 3)
    np.testing.assert_array_equal(labelled[:, -plain.shape[1] :], plain)
    three_rows = make_grid(numbered(7, 4, 4), labels=["a", "b", "c"], padding=0)  # rows of 3, 3 and 1
    assert three_rows.shape[0] == 3 * 4


def test_labels_on_dark_padding_use_light_ink():
    g = make_grid(numbered(2, 8, 8, c=1), nrow=1, pad_value=0, labels=["a", "b"])
    plain = make_grid(numbered(2, 8, 8, c=1), nrow=1, pad_value=0)
    side = g[:, : g.shape[1] - plain.shape[1]]
    assert g.shape[2] == 1 and side.max() > 128


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(batch=np.zeros((4, 4, 3), np.uint8)), "uint8 batch"),
        (dict(batch=np.zeros((2, 4, 4, 3), np.float32)), "uint8 batch"),
        (dict(batch=np.zeros((0, 4, 4, 3), np.uint8)), "uint8 batch"),
        (dict(nrow=0), "--nrow"),
        (dict(padding=-1), "--padding"),
        (dict(pad_value=256), "--pad-value"),
        (dict(pad_value=-1), "--pad-value"),
        (dict(scale=0), "--scale"),
        (dict(nrow=2, labels=["a", "b", "c"]), "3 row labels for 2 rows"),
        (dict(scale=10_000), r"would be 100006x80006 pixels .*smaller --scale"),  # refused before allocating
    ],
)
def test_bad_arguments(kwargs, match):
    kwargs.setdefault("batch", numbered(4))
    with pytest.raises(DtoolsError, match=match):
        make_grid(**kwargs)
