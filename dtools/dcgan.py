"""The DCGAN of Radford et al. 2016, scaled to the image size: the seed report's GAN baseline.

Generator: z (B, latent_dim) is read as a 1x1 map; a 4x4 transposed conv (stride 1) makes a 4x4 map
of base_channels * 2^(k-1) channels, then k-1 transposed convs (4x4, stride 2) each double the size
and halve the channels, each followed by BatchNorm and ReLU; a last transposed conv makes the image
channels at full size, and tanh maps them to [-1, 1]. k = log2(image_size) - 2 upsamplings in all:
3 for 32x32, 4 for 64x64 (the paper's 4x4x1024 -> 64x64 network at base_channels 128; PyTorch's
reference example uses 64, our default).

Discriminator, its mirror: strided 4x4 convs (stride 2) halve the size and double the channels, with
BatchNorm (not on the first layer) and LeakyReLU(0.2); a 4x4 conv over the last 4x4 map gives one
logit per image. No pooling, no fully connected hidden layers; every conv weight ~ N(0, 0.02) and
every BatchNorm scale ~ N(1, 0.02), as in the paper.

The config (`DCGANConfig`) rebuilds both networks; a checkpoint holds the generator only (its
"model" header), since that is what sampling needs. The VAE (dtools.vae) reuses the generator as
its decoder, so the two baselines decode z with the same network.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dtools.errors import DtoolsError, brief

# Bounds far above any real DCGAN, so that a crafted checkpoint header cannot make dtools build an absurd
# network (docs/formats.md, "Hostile and corrupt files"): image side, z's size, channels at 4x4
MAX_IMAGE_SIZE = 8192
MAX_LATENT = 65536
MAX_CHANNELS = 16384


@dataclass
class DCGANConfig:
    """Everything needed to rebuild the generator (and discriminator); it goes into checkpoints."""

    image_size: int = 64  # a power of two, at least 8
    channels: int = 3  # 1 (grey) or 3 (RGB)
    latent_dim: int = 100  # z's size (the paper's 100)
    base_channels: int = 64  # channels next to the image; doubled at every smaller size

    @property
    def stages(self) -> int:
        """Size doublings from 4x4 to the image: log2(image_size) - 2."""
        return int(math.log2(self.image_size)) - 2

    def widths(self) -> list[int]:
        """Channels of the feature maps from 4x4 up to half the image size."""
        return [self.base_channels * 2 ** i for i in reversed(range(self.stages))]

    def validate(self) -> DCGANConfig:
        """Check every field; raise a one-line DtoolsError naming the bad value."""
        for name in ("image_size", "channels", "latent_dim", "base_channels"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise DtoolsError(f"model config: {name} must be a positive integer, got {brief(v)}")
        if self.channels not in (1, 3):
            raise DtoolsError(f"model config: channels must be 1 or 3, got {self.channels}")
        if self.image_size < 8 or self.image_size & (self.image_size - 1) or self.image_size > MAX_IMAGE_SIZE:
            raise DtoolsError(f"image size {self.image_size}: a DCGAN needs a power of two from 8 up to "
                              f"{MAX_IMAGE_SIZE} (8, 16, 32, 64, ...); resize with dtools prep --size")
        widest = max(self.widths(), default=self.base_channels)  # at 4x4
        if self.latent_dim > MAX_LATENT or widest > MAX_CHANNELS:
            raise DtoolsError(f"model config: latent_dim {self.latent_dim} (at most {MAX_LATENT}) or "
                              f"base_channels {self.base_channels} ({widest} at 4x4, at most {MAX_CHANNELS}) "
                              "is out of bounds")
        return self

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DCGANConfig:
        """Rebuild from a checkpoint's JSON; unknown keys and bad values are errors."""
        return config_from_dict(cls, d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images the generator makes."""
        return self.channels, self.image_size, self.image_size

    def build(self) -> nn.Module:
        """The network a checkpoint of this config holds: the generator (dtools.models)."""
        return Generator(self)

    def trained(self) -> dict[str, nn.Module]:
        """Every network a run of this config trains, by name (for their sizes)."""
        return {"generator": Generator(self), "discriminator": Discriminator(self)}


def config_from_dict(cls, d: dict[str, Any]):
    """`cls(**d)`, validated; a non-object, unknown keys and bad values are one-line errors."""
    if not isinstance(d, dict):
        raise DtoolsError(f"model config must be a JSON object, got {type(d).__name__}")
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise DtoolsError(f"model config: unknown key(s) {', '.join(unknown)}")
    return cls(**d).validate()


def init_weights(module: nn.Module) -> None:
    """The paper's initialisation: conv weights ~ N(0, 0.02), BatchNorm scales ~ N(1, 0.02), shifts 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class Generator(nn.Module):
    """z (B, latent_dim) -> images (B, C, H, W) in [-1, 1]."""

    def __init__(self, cfg: DCGANConfig):
        super().__init__()
        self.config = cfg.validate()
        self.latent_dim = cfg.latent_dim
        widths = cfg.widths()
        layers: list[nn.Module] = [nn.ConvTranspose2d(cfg.latent_dim, widths[0], 4, 1, 0, bias=False),
                                   nn.BatchNorm2d(widths[0]), nn.ReLU(True)]  # (B, w0, 4, 4)
        for c_in, c_out in zip(widths, widths[1:], strict=False):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out),
                       nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(widths[-1], cfg.channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z[:, :, None, None])  # (B, latent) -> (B, C, H, W)


STANDING_IMAGES, STANDING_BATCH = 2048, 256  # z's that a generator's standing statistics are measured on


@torch.no_grad()
def standing_statistics(generator: Generator, seed: int,
                        autocast: contextlib.AbstractContextManager | None = None) -> Generator:
    """A copy of `generator`, in eval mode, whose BatchNorm running statistics are measured on its own
    activations for STANDING_IMAGES z ~ N(0, I) drawn from a generator seeded with `seed` (the plain
    average over them). An EMA of a generator's weights needs this: the statistics it carries are an
    average of the online generator's, never measured for the averaged weights ("standing
    statistics", Brock et al. 2019, appendix C.1). `autocast`: the precision's context."""
    g = copy.deepcopy(generator)
    norms = [m for m in g.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # the cumulative average over the batches below
    g.train()
    gen = torch.Generator().manual_seed(int(seed))
    device = next(g.parameters()).device
    with autocast or contextlib.nullcontext():
        for _ in range(STANDING_IMAGES // STANDING_BATCH):
            g(torch.randn(STANDING_BATCH, g.latent_dim, generator=gen).to(device))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    return g.eval()


def encoder_layers(cfg: DCGANConfig) -> list[nn.Module]:
    """The discriminator's body: image (B, C, H, W) -> features (B, widths[0], 4, 4)."""
    widths = cfg.widths()[::-1]  # from the image down: base, 2 base, ...
    layers: list[nn.Module] = [nn.Conv2d(cfg.channels, widths[0], 4, 2, 1, bias=False),
                               nn.LeakyReLU(0.2, True)]  # no BatchNorm on the first layer (the paper)
    for c_in, c_out in zip(widths, widths[1:], strict=False):
        layers += [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out),
                   nn.LeakyReLU(0.2, True)]
    return layers


class Discriminator(nn.Module):
    """images (B, C, H, W) in [-1, 1] -> one logit per image (B,): > 0 says "real"."""

    def __init__(self, cfg: DCGANConfig):
        super().__init__()
        self.config = cfg.validate()
        self.net = nn.Sequential(*encoder_layers(cfg), nn.Conv2d(cfg.widths()[0], 1, 4, 1, 0, bias=False))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten()  # (B, 1, 1, 1) -> (B,)
