"""Lay an image batch out as one picture: rows of `nrow` images with padding, optional row labels."""

from __future__ import annotations

import math

import numpy as np

from dtools.errors import DtoolsError

MAX_PIXELS = 2**28  # 268 million pixels (805 MB as RGB): far past any useful picture, short of a memory crash
READABLE_WIDTH = 256  # scale=None enlarges tiny images until the grid is at least this wide...
MAX_AUTO_SCALE = 8  # ...by at most this factor


def readable_scale(ncol: int, w: int, padding: int) -> int:
    """The smallest integer scale at which `ncol` images of width `w` make a grid at least READABLE_WIDTH
    pixels wide (1 when they already do; at most MAX_AUTO_SCALE): 32x32 emoji in 6 columns get 2."""
    for scale in range(1, MAX_AUTO_SCALE):
        if padding + ncol * (w * scale + padding) >= READABLE_WIDTH:
            return scale
    return MAX_AUTO_SCALE


def upscale(batch: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscaling by an integer factor: tiny images stay crisp. [N,H,W,C] -> [N,sH,sW,C]."""
    if scale < 1:
        raise DtoolsError(f"--scale must be a positive integer, got {scale}")
    if scale == 1:
        return batch
    return batch.repeat(scale, axis=1).repeat(scale, axis=2)


def make_grid(
    batch: np.ndarray,
    nrow: int | None = None,
    padding: int = 2,
    scale: int | None = 1,
    pad_value: int = 255,
    labels: list[str] | None = None,
) -> np.ndarray:
    """uint8 [N, H, W, C] -> one uint8 image [H', W', C] with `nrow` images per row.

    `nrow` defaults to N / len(labels) with labels, else ceil(sqrt(N)); a last, incomplete row is
    filled with `pad_value`; `scale` None picks `readable_scale`. Image (r, c) sits at
    (padding + r (h + padding), padding + c (w + padding))
    before the label margin; `labels` (at most one per row) are written in a margin on the left.
    """
    if batch.ndim != 4 or batch.dtype != np.uint8 or batch.shape[0] == 0:
        raise DtoolsError(f"grid needs a uint8 batch [N,H,W,C], got {batch.dtype} {list(batch.shape)}")
    if padding < 0:
        raise DtoolsError(f"--padding must be >= 0, got {padding}")
    if not 0 <= pad_value <= 255:
        raise DtoolsError(f"--pad-value must lie in [0, 255], got {pad_value}")
    if scale is not None and scale < 1:
        raise DtoolsError(f"--scale must be a positive integer, got {scale}")
    n, h, w, c = batch.shape
    if nrow is not None:
        ncol = nrow
    elif labels:  # one row per label: `noise ... | grid --row-labels a,b,c` needs no --nrow
        ncol = math.ceil(n / len(labels))
    else:
        ncol = math.ceil(math.sqrt(n))
    if ncol < 1:
        raise DtoolsError(f"--nrow must be a positive integer, got {ncol}")
    ncol = min(ncol, n)
    if scale is None:
        scale = readable_scale(ncol, w, padding)
    h, w = h * scale, w * scale
    rows = math.ceil(n / ncol)
    height, width = padding + rows * (h + padding), padding + ncol * (w + padding)
    if height * width > MAX_PIXELS:
        raise DtoolsError(
            f"the grid would be {width}x{height} pixels (over {MAX_PIXELS // 10**6} million); "
            "use a smaller --scale, fewer images (--limit) or a different --nrow"
        )
    batch = upscale(batch, scale)
    if labels is not None and len(labels) > rows:
        raise DtoolsError(f"{len(labels)} row labels for {rows} rows of {ncol} images")
    grid = np.full((height, width, c), pad_value, np.uint8)
    for i, img in enumerate(batch):
        r, col = divmod(i, ncol)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        grid[y : y + h, x : x + w] = img
    if labels:
        grid = _label_rows(grid, labels, h, padding, pad_value)
    return grid


def _label_rows(grid: np.ndarray, labels: list[str], h: int, padding: int, pad_value: int) -> np.ndarray:
    """Prepend a margin holding each row's label, vertically centred on the row."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    boxes = [probe.textbbox((0, 0), s, font=font) for s in labels]
    margin = max(b[2] - b[0] for b in boxes) + 2 * max(padding, 4)
    c = grid.shape[2]
    ink = 0 if pad_value >= 128 else 255
    mode, bg = ("L", pad_value) if c == 1 else ("RGB", (pad_value,) * 3)
    canvas = Image.new(mode, (margin, grid.shape[0]), bg)
    draw = ImageDraw.Draw(canvas)
    for r, (text, box) in enumerate(zip(labels, boxes, strict=False)):
        y = padding + r * (h + padding) + (h - (box[3] - box[1])) // 2 - box[1]
        draw.text((max(padding, 4), y), text, fill=ink if c == 1 else (ink,) * 3, font=font)
    side = np.asarray(canvas, dtype=np.uint8)
    side = side[..., None] if side.ndim == 2 else side
    return np.concatenate([side, grid], axis=1)
