"""Shared by the CUDA tests: tiny twemoji folders, a tiny U-Net's options, and TF32 kept off between tests.

These tests need a CUDA GPU: they are marked `cuda` and skipped without one (run them alone with
`pytest -m cuda`, or `make gpu-check`, which also times the GPU path: docs/performance.md).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from dtools import train as training
from dtools.schedules import make_schedule
from dtools.train.data import load_images

BETAS = make_schedule("cosine", 100)
# A U-Net small enough to compile in seconds: 16x16 images, 16 base channels, 2 levels, attention at 8x8
TINY = {"base_channels": 16, "channel_mult": (1, 2), "num_res_blocks": 1, "attention_resolutions": (8,),
        "num_heads": 2, "dropout": 0.0}  # on the cpu16 preset (8 GroupNorm groups)


@pytest.fixture(autouse=True)
def exact_fp32():
    """fp32 means fp32 in a reference: TF32 off (the Trainer turns it on for CUDA speed), then restored."""
    cuda, cudnn = torch.backends.cuda, torch.backends.cudnn
    flags = cuda.matmul.allow_tf32, cudnn.allow_tf32, cudnn.benchmark
    cuda.matmul.allow_tf32 = cudnn.allow_tf32 = False
    yield
    cuda.matmul.allow_tf32, cudnn.allow_tf32, cudnn.benchmark = flags


def _root_conftest():
    """tests/conftest.py as a module (its name is this file's too, so it is loaded by path)."""
    path = Path(__file__).parents[1] / "conftest.py"
    spec = importlib.util.spec_from_file_location("tests_root_conftest", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_tiny_pngs = _root_conftest().make_tiny_pngs


@pytest.fixture
def png_folder():
    """`png_folder(folder, n, size)`: n emoji as size x size RGB PNGs; returns them (N, H, W, 3) uint8."""
    return make_tiny_pngs


@pytest.fixture(scope="session")
def data16(tmp_path_factory) -> Path:
    """32 emoji of 16x16 pixels."""
    folder = tmp_path_factory.mktemp("cuda") / "data16"
    make_tiny_pngs(folder, 32, 16)
    return folder


@pytest.fixture
def config():
    """`config(data, out, **options)`: a new run's TrainConfig on the GPU with the tiny U-Net (a DDPM), or
    with `model_type="dcgan"|"vae"` a baseline with its defaults."""

    def make(data, out, **options) -> training.TrainConfig:
        base = dict(TINY) if options.get("model_type", "unet") == "unet" else {"base_channels": 8}
        opts = {**base, "lr": 1e-3, "batch_size": 16, "sample_every": 0, "save_every": 5, "log_every": 1,
                "device": "cuda", "seed": 0, **options}
        n, c, h, _ = load_images(str(data)).shape
        return training.new_config(str(data), str(out), "cosine", BETAS, (n, h, h, c), opts)

    return make
