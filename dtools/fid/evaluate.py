"""Image sets in (folders, .npy batches, stdin; any size, grey or RGB) and their Inception features."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from dtools.errors import DtoolsError
from dtools.fid.inception import InceptionV3
from dtools.images import ImageSource, open_source


def open_images(source: str) -> ImageSource:
    """An image folder (recursive, sorted), a ``.npy`` uint8 batch [N,H,W,C] or ``-`` (stdin), as RGB.

    Grey images are repeated to RGB; transparency is composited onto white (as everywhere in dtools).
    Images of a folder may differ in size: each is resized to 299x299 by the network.
    """
    return open_source(source, channels=3, empty_hint=" in this folder")


@torch.inference_mode()
def extract_features(
    net: InceptionV3,
    images: ImageSource,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Run the network over every image: {"2048": (N, 2048) float32, ["logits_unbiased": (N, 1008)]}.

    ``on_batch(n)`` is called after each batch with the number of images it held (progress bars).
    """
    if batch_size < 1:
        raise DtoolsError(f"--batch-size must be at least 1, got {batch_size}")
    device = torch.device(device)
    out: dict[str, list[torch.Tensor]] = {name: [] for name in net.features_list}
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # TF32 convolutions would move FID by more than its rounding
    try:
        for batch in images.batches(batch_size):  # (B, H, W, 3) uint8
            x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).to(device)  # (B, 3, H, W)
            for name, feats in zip(net.features_list, net(x), strict=True):
                out[name].append(feats.to("cpu", torch.float32))
            if on_batch is not None:
                on_batch(len(batch))
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    features = {name: torch.cat(parts) for name, parts in out.items()}
    bad = ~torch.isfinite(features["2048"]).all(dim=1)
    if bad.any():
        raise DtoolsError(f"{images.name}: the network gave NaN features for {int(bad.sum())} images")
    return features
