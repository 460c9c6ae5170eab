"""The defaults a new run starts from: PRESETS, the U-Nets (by image size) and their training defaults.
A model type without presets (the seed's baselines, `--model dcgan|vae`) brings its own recipe in its
spec (dtools.models) and takes the run cadence (default steps, saves, sample grids, EMA decay and
warm-up) of the U-Net preset for the same image size, so the three models of a comparison differ in
what they are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dtools.errors import DtoolsError
from dtools.unet import UNetConfig

# ---------------------------------------------------------------------------------------------
# Presets, chosen by image size. "seed64" is the seed report's network and recipe; the CPU presets
# were sized by short measured runs on a 2-core CPU (docs/train.md, "How the CPU presets were chosen")
# to learn emoji-like blobs in minutes.


@dataclass(frozen=True)
class Preset:
    """A U-Net for an image size, and the training defaults that come with it (options override them)."""

    summary: str
    build: Callable[[int, int], UNetConfig]  # (image_size, channels) -> config
    lr: float
    batch_size: int
    ema_warmup: bool
    max_steps: int  # the default only when neither --max-steps nor --epochs is given
    save_every: int
    sample_every: int
    grad_clip: float | None
    warmup: float = 0.0  # the learning rate's warm-up, as a fraction of the run (train/lr.py)
    lr_decay: str = "constant"
    ema_length: float | None = None  # EDM2's σ_rel; None: the fixed --ema decay
    parameterization: str = "eps"  # what the network predicts (--param)
    min_snr_gamma: float | None = None  # the loss weight (--min-snr-gamma); None: plain MSE
    min_snr_floor: float = 0.0  # its least value on the noisy side (--min-snr-floor)

    def defaults(self) -> dict[str, Any]:
        """The TrainConfig fields this preset sets (all but max_steps)."""
        return {"lr": self.lr, "batch_size": self.batch_size, "ema_warmup": self.ema_warmup,
                "save_every": self.save_every, "sample_every": self.sample_every, "grad_clip": self.grad_clip,
                "warmup": self.warmup, "lr_decay": self.lr_decay, "ema_length": self.ema_length,
                "parameterization": self.parameterization, "min_snr_gamma": self.min_snr_gamma,
                "min_snr_floor": self.min_snr_floor}


def _seed64(size: int, channels: int) -> UNetConfig:
    # 3 levels, 64 base channels doubling, attention at the deepest level (16x16 for 64x64 input)
    return UNetConfig(size, channels, 64, (1, 2, 4), 2, (size // 4,), num_heads=4, dropout=0.1)


def _cpu32(size: int, channels: int) -> UNetConfig:
    return UNetConfig(size, channels, 32, (1, 2, 2), 1, (size // 4,), num_heads=2, dropout=0.0, norm_groups=8)


def _cpu16(size: int, channels: int) -> UNetConfig:
    return UNetConfig(size, channels, 32, (1, 2), 1, (size // 2,), num_heads=2, dropout=0.0, norm_groups=8)


# constant lr and fixed-decay EMA: at 1,200 steps they beat warm-up + cosine decay + power EMA 0.1
# (FID 210.8 against 242.9 on held-out emoji, docs/quality.md)
_CPU = {"lr": 1e-3, "batch_size": 16, "ema_warmup": True, "max_steps": 2000, "save_every": 250,
        "sample_every": 500, "grad_clip": 1.0, "parameterization": "v", "min_snr_gamma": 5.0}
PRESETS: dict[str, Preset] = {
    "cpu16": Preset("16x16: 2 levels, 32 base channels (1,2), 1 block per level, attention at 8x8", _cpu16,
                    **_CPU),
    "cpu32": Preset("32x32: 3 levels, 32 base channels (1,2,2), 1 block per level, attention at 8x8", _cpu32,
                    **_CPU),
    "seed64": Preset("64x64, the seed: 3 levels, 64 base channels (1,2,4), 2 blocks, attention 16", _seed64,
                     lr=1e-4, batch_size=128, ema_warmup=False, max_steps=25_000, save_every=1000,
                     sample_every=1000, grad_clip=None),
}


def preset_for_size(image_size: int) -> str:
    """The preset `auto` picks: cpu16 up to 16 pixels, cpu32 up to 32, else the seed's network."""
    if image_size <= 16:
        return "cpu16"
    if image_size <= 32:
        return "cpu32"
    return "seed64"


def resolve_preset(name: str, image_size: int) -> str:
    """The preset that --preset `name` stands for (`auto`: by image size); an unknown name is an error."""
    resolved = preset_for_size(image_size) if name == "auto" else name
    if resolved not in PRESETS:
        raise DtoolsError(f"unknown --preset {name!r}; choose auto or one of {', '.join(PRESETS)}")
    return resolved


def preset_config(name: str, image_size: int, channels: int) -> UNetConfig:
    """The U-Net of preset `name` (or `auto`) for images of `image_size` pixels and `channels`."""
    return PRESETS[resolve_preset(name, image_size)].build(image_size, channels)
