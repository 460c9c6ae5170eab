"""The noise-prediction U-Net of the seed report (Ho et al. 2020, with Nichol & Dhariwal's tweaks).

Per level: `num_res_blocks` residual blocks (GroupNorm, SiLU, 3x3 conv; the timestep embedding is
added after the first conv; dropout before the second conv), self-attention after each block at
the resolutions in `attention_resolutions`, then a strided-conv downsample. A middle block
(residual, attention, residual) sits at the lowest resolution. The up path mirrors it with one
extra block per level that consumes the skip connections. The last conv of every residual and
attention block and the output conv start at zero, so each block starts as the identity and the
untrained network predicts 0.

The network knows nothing about schedules: it maps (x_t, t) with t the integer timestep index to a
tensor of x_t's shape. Compile it in place (`model.compile()`) so state-dict keys stay clean.

Speed (docs/performance.md): the network runs in whatever memory format its weights and input have;
`dtools.runtime` puts both in channels-last, which oneDNN's CPU kernels (AMX bf16 above all) and
cuDNN prefer, and every op here keeps that format (torch.cat of channels-last skips, nearest
upsampling, the broadcast timestep add). Two kernel choices depend on what a forward pass is for, and
are made per call in dtools.unet_kernels (its GroupNorm and `attend`): both keep the parameters and
their state-dict keys of the plain network and agree with it to float rounding (tests/test_unet.py).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dtools.errors import DtoolsError, brief
from dtools.unet_kernels import GroupNorm, attend, is_channels_last

MAX_CLASSES = 100_000  # more classes than any image data set has: a crafted header, not a model
# Bounds far above any real U-Net, so that a crafted checkpoint header cannot make dtools build an absurd
# network (docs/formats.md, "Hostile and corrupt files"): image side, channels at any level, levels,
# residual blocks per level, the timestep-embedding multiplier
MAX_IMAGE_SIZE = 8192
MAX_CHANNELS = 16384
MAX_LEVELS = 12
MAX_RES_BLOCKS = 64
MAX_EMBED_MULT = 64


@dataclass
class UNetConfig:
    """Everything needed to rebuild the network; `dataclasses.asdict` of it goes into checkpoints."""

    image_size: int = 64
    in_channels: int = 3  # 1 (grey) or 3 (RGB); the output has the same channels
    base_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 4)  # one entry per level; level i has base * mult[i] channels
    num_res_blocks: int = 2  # residual blocks per level on the way down (one more on the way up)
    attention_resolutions: tuple[int, ...] = (16,)  # feature-map sizes that get self-attention
    num_heads: int = 4
    head_channels: int = 0  # > 0: heads = channels // head_channels (overrides num_heads)
    dropout: float = 0.1
    norm_groups: int = 32  # GroupNorm groups (must divide every level's channels)
    time_embed_mult: int = 4  # timestep-embedding width = base_channels * time_embed_mult
    mid_attention: bool = True  # self-attention in the middle block
    # > 0: class-conditional: a learned embedding of the class (num_classes rows, then the null class
    # that stands for "no class", label dropout's target) is added to the timestep embedding
    num_classes: int = 0

    def __post_init__(self) -> None:
        self.channel_mult = tuple(self.channel_mult)
        self.attention_resolutions = tuple(self.attention_resolutions)

    @property
    def null_class(self) -> int:
        """The class index that means "no class" (the unconditional call of a conditional network)."""
        return self.num_classes

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def resolutions(self) -> list[int]:
        """Feature-map size at each level, from the input size down."""
        return [self.image_size // 2**i for i in range(len(self.channel_mult))]

    def heads_for(self, channels: int) -> int:
        return channels // self.head_channels if self.head_channels > 0 else self.num_heads

    def validate(self) -> UNetConfig:
        """Check every field; raise a one-line DtoolsError naming the bad value."""
        ints = ("image_size", "in_channels", "base_channels", "num_res_blocks", "num_heads", "head_channels",
                "norm_groups", "time_embed_mult", "num_classes")
        for name in ints:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise DtoolsError(f"model config: {name} must be an integer, got {brief(v)}")
        if self.in_channels not in (1, 3):
            raise DtoolsError(f"model config: in_channels must be 1 or 3, got {self.in_channels}")
        for name in ("base_channels", "num_res_blocks", "num_heads", "norm_groups", "time_embed_mult"):
            if getattr(self, name) < 1:
                raise DtoolsError(f"model config: {name} must be at least 1, got {getattr(self, name)}")
        bounds = (("image_size", MAX_IMAGE_SIZE), ("base_channels", MAX_CHANNELS),
                  ("num_res_blocks", MAX_RES_BLOCKS), ("time_embed_mult", MAX_EMBED_MULT))
        for name, most in bounds:
            if getattr(self, name) > most:
                raise DtoolsError(f"model config: {name} must be at most {most}, got {getattr(self, name)}")
        if not 0 <= self.num_classes <= MAX_CLASSES:
            raise DtoolsError(f"model config: num_classes must lie in [0, {MAX_CLASSES}], got "
                              f"{self.num_classes}")
        if self.head_channels < 0:
            raise DtoolsError(f"model config: head_channels must be >= 0, got {self.head_channels}")
        bad_mult = any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in self.channel_mult)
        if not self.channel_mult or bad_mult:
            raise DtoolsError(f"model config: channel_mult needs positive integers, got "
                              f"{brief(self.channel_mult)}")
        if len(self.channel_mult) > MAX_LEVELS or self.base_channels * max(self.channel_mult) > MAX_CHANNELS:
            raise DtoolsError(f"model config: channel_mult {brief(self.channel_mult)} makes more than "
                              f"{MAX_LEVELS} levels or more than {MAX_CHANNELS} channels")
        if len(self.attention_resolutions) > MAX_LEVELS or not all(
                isinstance(r, int) and not isinstance(r, bool) for r in self.attention_resolutions):
            raise DtoolsError(f"model config: attention_resolutions must be a few integers, got "
                              f"{brief(self.attention_resolutions)}")
        if self.num_heads > MAX_CHANNELS:
            raise DtoolsError(f"model config: num_heads must be at most {MAX_CHANNELS}, got {self.num_heads}")
        if not isinstance(self.dropout, int | float) or not 0 <= self.dropout < 1:
            raise DtoolsError(f"model config: dropout must lie in [0, 1), got {self.dropout!r}")
        if not isinstance(self.mid_attention, bool):
            raise DtoolsError(f"model config: mid_attention must be a boolean, got {self.mid_attention!r}")
        f = self.downsample_factor
        if self.image_size < f or self.image_size % f:
            raise DtoolsError(
                f"image size {self.image_size} is not divisible by {f}, the downsampling factor of a "
                f"{len(self.channel_mult)}-level U-Net; resize (dtools prep --size) or use fewer levels"
            )
        for r in self.attention_resolutions:
            if r not in self.resolutions:
                raise DtoolsError(
                    f"model config: attention at resolution {r} is never reached; the feature maps are "
                    f"{', '.join(map(str, self.resolutions))} for {self.image_size}x{self.image_size} images"
                )
        last = len(self.channel_mult) - 1
        for i, m in enumerate(self.channel_mult):
            ch = self.base_channels * m
            if ch % self.norm_groups:
                raise DtoolsError(
                    f"model config: {ch} channels cannot be split into {self.norm_groups} GroupNorm groups"
                )
            heads = self.heads_for(ch)
            attends = self.resolutions[i] in self.attention_resolutions or (i == last and self.mid_attention)
            if attends and (heads < 1 or ch % heads):
                raise DtoolsError(f"model config: {ch} channels cannot be split into {heads} attention heads")
        return self

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UNetConfig:
        """Rebuild from a checkpoint's JSON (lists become tuples); unknown keys and bad values are errors."""
        if not isinstance(d, dict):
            raise DtoolsError(f"model config must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise DtoolsError(f"model config: unknown key(s) {', '.join(unknown)}")
        kw = dict(d)
        for key in ("channel_mult", "attention_resolutions"):
            if key in kw:
                if not isinstance(kw[key], list | tuple):
                    raise DtoolsError(f"model config: {key} must be a list, got {kw[key]!r}")
                kw[key] = tuple(kw[key])
        return cls(**kw).validate()

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["channel_mult"] = list(self.channel_mult)
        d["attention_resolutions"] = list(self.attention_resolutions)
        if not self.num_classes:
            del d["num_classes"]  # an unconditional network's config keeps the keys it always had
        return d

    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images the network denoises."""
        return self.in_channels, self.image_size, self.image_size

    def build(self) -> UNet:
        """The network a checkpoint of this config holds (dtools.models)."""
        return UNet(self)

    def trained(self) -> dict[str, nn.Module]:
        """Every network a run of this config trains, by name (for their sizes)."""
        return {"unet": UNet(self)}


# ---------------------------------------------------------------------------------------------
# The network


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer sinusoids of the integer timestep: [cos(t ω_i), sin(t ω_i)], ω_i = max_period^(-i/half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb  # (B, dim)


# ---------------------------------------------------------------------------------------------
# Blocks


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GroupNorm, SiLU, conv, + timestep embedding; GroupNorm, SiLU, dropout, conv (zero-init); + skip."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2 = GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, out, H, W)
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over the H*W positions, with a residual connection."""

    def __init__(self, ch: int, heads: int, groups: int):
        super().__init__()
        self.heads = heads
        self.norm = GroupNorm(groups, ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = _zero(nn.Conv2d(ch, ch, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        heads, d = self.heads, C // self.heads
        qkv = self.qkv(self.norm(x))  # (B, 3C, H, W); channel = (which * heads + head) * d + i
        if is_channels_last(qkv):  # NHWC in memory: the sequence view costs no copy
            q, k, v = qkv.permute(0, 2, 3, 1).reshape(B, H * W, 3, heads, d).permute(2, 0, 3, 1, 4)
            h = attend(q, k, v)  # (B, heads, HW, d)
            h = h.transpose(1, 2).reshape(B, H, W, C).permute(0, 3, 1, 2)  # channels-last (B, C, H, W)
        else:
            q, k, v = qkv.reshape(B, 3, heads, d, H * W).transpose(-1, -2).unbind(1)  # (B, heads, HW, d)
            h = attend(q, k, v).transpose(-1, -2).reshape(B, C, H, W)
        return x + self.proj(h)


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """Residual blocks, each optionally followed by attention; used on both paths."""

    def __init__(self, blocks: list[ResBlock], attns: list[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attns = nn.ModuleList(attns)


class UNet(nn.Module):
    """forward(x: (B, C, H, W) float, t: (B,) int64 timestep index[, y: (B,) int64 class]) -> (B, C, H, W).

    A class-conditional network (num_classes > 0) adds the embedding of class y to the timestep
    embedding (improved-diffusion's and diffusers' `class_embedding`); y = num_classes, or y left out,
    is the null class: the unconditional prediction that classifier-free guidance needs.
    """

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        base, groups = cfg.base_channels, cfg.norm_groups
        emb_dim = base * cfg.time_embed_mult
        self.time_mlp = nn.Sequential(nn.Linear(base, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if cfg.num_classes:
            self.class_embed = nn.Embedding(cfg.num_classes + 1, emb_dim)  # the last row: the null class
        self.conv_in = nn.Conv2d(cfg.in_channels, base, 3, padding=1)

        def level(chs_in: list[int], ch_out: int, res: int) -> Level:
            blocks = [ResBlock(c, ch_out, emb_dim, cfg.dropout, groups) for c in chs_in]
            use = res in cfg.attention_resolutions
            heads = cfg.heads_for(ch_out)
            attns = [Attention(ch_out, heads, groups) if use else nn.Identity() for _ in chs_in]
            return Level(blocks, attns)

        # Down path: remember the channels of every skip tensor pushed.
        skips, ch = [base], base
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        for i, mult in enumerate(cfg.channel_mult):
            out = base * mult
            ins = [ch] + [out] * (cfg.num_res_blocks - 1)
            self.down.append(level(ins, out, cfg.resolutions[i]))
            ch = out
            skips += [ch] * cfg.num_res_blocks
            last = i == len(cfg.channel_mult) - 1
            self.downsample.append(nn.Identity() if last else Downsample(ch))
            if not last:
                skips.append(ch)

        self.mid1 = ResBlock(ch, ch, emb_dim, cfg.dropout, groups)
        self.mid_attn = Attention(ch, cfg.heads_for(ch), groups) if cfg.mid_attention else nn.Identity()
        self.mid2 = ResBlock(ch, ch, emb_dim, cfg.dropout, groups)

        # Up path: num_res_blocks + 1 blocks per level, each eating one skip tensor.
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i in reversed(range(len(cfg.channel_mult))):
            out = base * cfg.channel_mult[i]
            ins = []
            for _ in range(cfg.num_res_blocks + 1):
                ins.append(ch + skips.pop())
                ch = out
            self.up.append(level(ins, out, cfg.resolutions[i]))
            self.upsample.append(Upsample(ch) if i > 0 else nn.Identity())
        assert not skips

        self.norm_out = GroupNorm(groups, ch)
        self.conv_out = _zero(nn.Conv2d(ch, cfg.in_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.cfg.base_channels).to(x.dtype))  # (B, E)
        if self.cfg.num_classes:
            if y is None:
                y = torch.full_like(t, self.cfg.null_class)
            emb = emb + self.class_embed(y).to(emb.dtype)  # (B, E)
        elif y is not None:
            raise DtoolsError("this network is unconditional: it takes no class")
        h = self.conv_in(x)  # (B, base, H, W)
        hs = [h]
        for lvl, down in zip(self.down, self.downsample, strict=True):
            for block, attn in zip(lvl.blocks, lvl.attns, strict=True):
                h = attn(block(h, emb))
                hs.append(h)
            if not isinstance(down, nn.Identity):
                h = down(h)
                hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for lvl, up in zip(self.up, self.upsample, strict=True):
            for block, attn in zip(lvl.blocks, lvl.attns, strict=True):
                h = attn(block(torch.cat([h, hs.pop()], dim=1), emb))
            h = up(h)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, C, H, W)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
