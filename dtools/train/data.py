"""Training data: an image folder (or `.npy` batch) decoded once into a uint8 tensor in memory, and a
seeded stream of mini-batches that reshuffles every epoch and can be saved and restored exactly.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from dtools.errors import DtoolsError
from dtools.images import list_image_files, load_image, read_images
from dtools.labels import LABELS_FILE, read_labels

# Refuse to decode a data set whose uint8 pixels would take more than this share of free memory.
MEMORY_SHARE = 0.5


def available_memory() -> int | None:
    """Bytes of memory the kernel says are available (Linux), or None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _size(n: float) -> str:
    for unit, e in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 2**e:
            return f"{n / 2**e:.1f} {unit}"
    return f"{int(n)} bytes"


def check_fits(n_images: int, shape: tuple[int, ...], source: str) -> None:
    need = n_images * int(np.prod(shape))
    free = available_memory()
    if free is not None and need > MEMORY_SHARE * free:
        raise DtoolsError(
            f"{source}: {n_images} images of {'x'.join(map(str, shape))} need {_size(need)} in memory, "
            f"but only {_size(free)} is free; use fewer images or smaller ones (dtools prep --size)"
        )


def _image_files(p: Path) -> list[Path]:
    """The images of folder `p`, or an error when it holds none."""
    files = list_image_files(p)
    if not files:
        raise DtoolsError(f"{p}: no images found; prepare some with `dtools prep SRC {p} --size 32`")
    return files


def peek(source: str) -> tuple[int, int, int, int]:
    """(N, H, W, C) of a data source without decoding all of it (a folder: first image + file count)."""
    p = Path(source)
    if p.is_dir():
        files = _image_files(p)
        h, w, c = load_image(files[0]).shape
        return len(files), h, w, c
    arr = read_images([source])
    return tuple(arr.shape)  # type: ignore[return-value]


def load_images(source: str) -> torch.Tensor:
    """All images of `source` as a uint8 tensor (N, C, H, W); they must be square and of one size."""
    p = Path(source)
    if p.is_dir():
        files = _image_files(p)
        check_fits(len(files), load_image(files[0]).shape, source)
    arr = read_images([source])  # (N, H, W, C) uint8, one size (or a DtoolsError)
    n, h, w, c = arr.shape
    if h != w:
        raise DtoolsError(f"{source}: images are {w}x{h}; the U-Net needs square ones (dtools prep --size N)")
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).contiguous()  # (N, C, H, W)


def data_classes(source: str) -> tuple[str, ...] | None:
    """The class names of a labelled data folder (its dataset.json), None for unlabelled data."""
    labels = read_labels(source)
    return None if labels is None else labels.classes


def load_labels(source: str, classes: tuple[str, ...] | list[str]) -> torch.Tensor:
    """The class index of every image of the folder `source`, in `load_images`' order: (N,) int64. Its
    dataset.json must name exactly `classes` (those the run was set up for)."""
    labels = read_labels(source)
    if labels is None:
        raise DtoolsError(f"{source}: no {LABELS_FILE} beside the images, but the run is conditioned on "
                          f"the classes {', '.join(classes)}")
    if labels.classes != tuple(classes):
        raise DtoolsError(f"{source}: its {LABELS_FILE} names the classes {', '.join(labels.classes)}, but "
                          f"the run is conditioned on {', '.join(classes)}")
    files = _image_files(Path(source))
    return torch.from_numpy(labels.for_files(files, source))


def fingerprint(images: torch.Tensor, labels: torch.Tensor | None = None) -> str:
    """A short hash of the pixels (and of the labels of labelled data), so --resume can tell that the
    data changed."""
    h = hashlib.sha256(str(tuple(images.shape)).encode())
    h.update(images.numpy().tobytes())
    if labels is not None:
        h.update(labels.numpy().astype("<i8").tobytes())
    return h.hexdigest()[:16]


class Batch(NamedTuple):
    """A training batch on the device: images (B, C, H, W) in [-1, 1] and, for labelled data, their
    conditions (B,) (class indices); None for unlabelled data."""

    images: torch.Tensor
    labels: torch.Tensor | None = None


@dataclass
class BatchStream:
    """An endless stream of indices into N images: each epoch is a fresh permutation drawn from a
    seeded generator; a batch that runs past the end of an epoch continues in the next one.

    Its whole state (epoch, position, current permutation, generator state) is saved with a
    checkpoint, so a resumed run sees exactly the batches an uninterrupted run would.
    """

    n: int
    seed: int
    epoch: int = 0
    pos: int = 0
    perm: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.generator = torch.Generator().manual_seed(self.seed)
        if self.perm is None:
            self.perm = torch.randperm(self.n, generator=self.generator)

    def next(self, size: int) -> torch.Tensor:
        """The next `size` indices (int64)."""
        out = []
        while size > 0:
            if self.pos == self.n:
                self.epoch += 1
                self.pos = 0
                self.perm = torch.randperm(self.n, generator=self.generator)
            take = min(size, self.n - self.pos)
            out.append(self.perm[self.pos:self.pos + take])
            self.pos += take
            size -= take
        return torch.cat(out)

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
        """(tensors, json) describing the stream exactly."""
        return {"perm": self.perm.clone(), "generator": self.generator.get_state()}, {
            "epoch": self.epoch, "pos": self.pos, "n": self.n, "seed": self.seed,
        }

    @classmethod
    def restore(cls, tensors: dict[str, torch.Tensor], info: dict[str, int]) -> BatchStream:
        stream = cls(info["n"], info["seed"], epoch=info["epoch"], pos=info["pos"], perm=tensors["perm"])
        stream.generator.set_state(tensors["generator"])
        return stream


def augment(x: torch.Tensor, flip: bool) -> torch.Tensor:
    """Random horizontal flip of each image with probability 1/2 (draws from torch's global RNG)."""
    if not flip:
        return x
    mask = torch.rand(x.shape[0]) < 0.5  # (B,)
    return torch.where(mask[:, None, None, None], x.flip(-1), x)
