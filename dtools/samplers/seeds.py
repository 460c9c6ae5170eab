"""Where a sampler's randomness comes from: each image draws from a generator of its own.

Image i draws its x_T and every later noise from its own CPU `torch.Generator` seeded with `seeds[i]`
(`image_seed(seed, i)` in `dtools sample`), so an image depends only on its seed, never on the batch
it was drawn in or on the device.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import torch

NoiseFn = Callable[[], torch.Tensor]  # a fresh N(0, I) draw of the batch's shape, float64


def image_seed(seed: int, i: int) -> int:
    """The seed of image i under `dtools sample --seed SEED`: a 63-bit hash of (seed, i).

    Hashing (rather than seed + i) keeps the images of --seed 0 and --seed 1 unrelated.
    """
    digest = hashlib.blake2b(f"dtools.image:{int(seed)}:{int(i)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class ImageNoise:
    """Standard normal noise for a batch in which image i draws only from its own generator.

    Each draw is made on the CPU in float32 (the same numbers on every machine), then moved to the
    device as float64.
    """

    def __init__(self, seeds: Sequence[int], shape: tuple[int, ...], device: torch.device | str = "cpu"):
        self.generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        self.shape = tuple(shape)
        self.device = torch.device(device)

    def __call__(self) -> torch.Tensor:
        z = torch.stack([torch.randn(self.shape, generator=g) for g in self.generators])  # (B, C, H, W)
        return z.to(self.device, torch.float64)
