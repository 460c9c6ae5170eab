"""diffusers' folder format for dtools' U-Net, both ways: the one mapping behind `dtools export` and
`dtools import`. diffusers itself is not needed: the files are JSON and safetensors.

A `DDPMPipeline` folder, as `DDPMPipeline.from_pretrained(DIR)` reads it:

    DIR/model_index.json                          the pipeline: a UNet2DModel and a DDPMScheduler
    DIR/unet/config.json                          UNet2DModel's config
    DIR/unet/diffusion_pytorch_model.safetensors  its weights; the metadata also holds the dtools header
    DIR/scheduler/scheduler_config.json           DDPMScheduler: the exact betas as trained_betas

dtools' U-Net is diffusers' `UNet2DModel` with DownBlock2D/AttnDownBlock2D levels, parameter for
parameter: the same timestep sinusoids ([cos, sin], i.e. flip_sin_to_cos=True, freq_shift=0), residual
blocks (GroupNorm eps 1e-5, SiLU, the embedding added after the first conv, dropout before the second),
attention (GroupNorm, q/k/v from one 1x1 conv in dtools and three Linears in diffusers, an output
projection, the residual, no rescaling), a strided-conv downsample after every level but the last, a
mid block, num_res_blocks + 1 blocks per level on the way up and a nearest-neighbour + conv upsample.
This module holds that mapping once: the config (`to_unet2d_config`, `from_unet2d_config`), the weights
(`to_diffusers_state`, `from_diffusers_state`) and the scheduler (`scheduler_config`, `read_scheduler`).
A config that the other side cannot express is refused with one line naming the field, never turned
into a different network. `dtools.diffusers_folder` reads and writes the folders.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import torch

from dtools.errors import DtoolsError
from dtools.schedules import rescale_zero_terminal_snr, validate_betas
from dtools.unet import UNetConfig

UNET_CLASS = "UNet2DModel"
SCHEDULER_CLASS = "DDPMScheduler"
PIPELINE_CLASS = "DDPMPipeline"
# Written as "_diffusers_version": the oldest diffusers whose UNet2DModel takes every key written here
# (time_embedding_dim came in 0.32); the test extra's floor.
DIFFUSERS_VERSION = "0.32.0"

# UNet2DModel options that dtools' U-Net has in one form only: written on export, required on import
# (a missing key means diffusers' default, which is this value for each of them).
FIXED: dict[str, Any] = {
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "flip_sin_to_cos": True,  # [cos, sin] of t·ω_i
    "freq_shift": 0,  # ω_i = 10000^(-i/half)
    "mid_block_type": "UNetMidBlock2D",
    "mid_block_scale_factor": 1,
    "downsample_padding": 1,
    "downsample_type": "conv",
    "upsample_type": "conv",
    "norm_eps": 1e-5,  # torch's GroupNorm default, which every dtools GroupNorm uses
    "resnet_time_scale_shift": "default",  # the embedding is added, not a scale and shift
    "class_embed_type": None,  # with num_class_embeds: an nn.Embedding added to the timestep embedding
}
# A class-conditional U-Net (dtools.unet: num_classes classes, then the null class) exports as
# num_class_embeds = num_classes + 1 and this key naming its null class; diffusers ignores the key, and
# import takes only class embeddings that have it (another model's classes have no null class).
NULL_CLASS_KEY = "dtools_null_class"
DOWN = {False: "DownBlock2D", True: "AttnDownBlock2D"}  # by "has attention"
UP = {False: "UpBlock2D", True: "AttnUpBlock2D"}

PREDICTION_TYPE = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}  # dtools -> diffusers
VARIANCE_TYPE = {"posterior": "fixed_small", "beta": "fixed_large"}  # `dtools sample --variance`
# the fixed variances that diffusers also keeps in log form; learned ones need a 2C-channel output
VARIANCE_OF = {"fixed_small": "posterior", "fixed_small_log": "posterior", "fixed_large": "beta",
               "fixed_large_log": "beta"}
# diffusers schedulers whose config holds DDPM's discrete betas (the sampler is dtools' own choice)
SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "DPMSolverMultistepScheduler",
              "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler",
              "LMSDiscreteScheduler", "UniPCMultistepScheduler")


# ---------------------------------------------------------------------------------------------
# The network's config


def _attends(cfg: UNetConfig) -> list[bool]:
    return [r in cfg.attention_resolutions for r in cfg.resolutions]


def _attention_head_dim(cfg: UNetConfig, widths: list[int]) -> int:
    """diffusers' one attention_head_dim for every attention block, or a refusal naming the field."""
    attending = {w for w, a in zip(widths, _attends(cfg), strict=True) if a}
    attending |= {widths[-1]} if cfg.mid_attention else set()
    if not attending:
        return widths[-1]  # no attention anywhere: unused
    if cfg.head_channels > 0:
        bad = sorted(w for w in attending if w % cfg.head_channels)
        if bad:
            raise DtoolsError(f"head_channels: {bad[0]} channels are not a whole number of "
                              f"{cfg.head_channels}-channel heads; diffusers would build narrower attention")
        return cfg.head_channels
    dims = sorted({w // cfg.num_heads for w in attending})
    if len(dims) > 1:
        raise DtoolsError(f"num_heads: {cfg.num_heads} heads at widths {sorted(attending)} are heads of "
                          f"{dims} channels; UNet2DModel has one attention_head_dim for every block")
    return dims[0]


def to_unet2d_config(cfg: UNetConfig) -> dict[str, Any]:
    """UNet2DModel's config.json for a dtools U-Net, or a DtoolsError naming the field it cannot express."""
    cfg.validate()
    if cfg.channel_mult[0] != 1:
        raise DtoolsError(f"channel_mult: diffusers' first level is as wide as its input conv, so "
                          f"channel_mult must start with 1, got {list(cfg.channel_mult)}")
    widths = [cfg.base_channels * m for m in cfg.channel_mult]
    attn = _attends(cfg)
    config = {
        "_class_name": UNET_CLASS, "_diffusers_version": DIFFUSERS_VERSION,
        "sample_size": cfg.image_size, "in_channels": cfg.in_channels, "out_channels": cfg.in_channels,
        "block_out_channels": widths, "layers_per_block": cfg.num_res_blocks,
        "down_block_types": [DOWN[a] for a in attn], "up_block_types": [UP[a] for a in reversed(attn)],
        "attention_head_dim": _attention_head_dim(cfg, widths), "add_attention": cfg.mid_attention,
        "norm_num_groups": cfg.norm_groups, "attn_norm_num_groups": None, "dropout": float(cfg.dropout),
        "act_fn": "silu", **FIXED,
    }
    config["num_class_embeds"] = cfg.num_classes + 1 if cfg.num_classes else None
    if cfg.num_classes:
        config[NULL_CLASS_KEY] = cfg.null_class
    if cfg.time_embed_mult != 4:  # diffusers' default is 4 x block_out_channels[0]
        config["time_embedding_dim"] = cfg.base_channels * cfg.time_embed_mult
    return config


def _int(config: dict[str, Any], key: str, default: Any = None) -> int:
    v = config.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise DtoolsError(f"{key} must be a positive integer, got {v!r}")
    return v


def _ints(config: dict[str, Any], key: str) -> list[int]:
    v = config.get(key)
    if not isinstance(v, list | tuple) or not v or any(isinstance(x, bool) or not isinstance(x, int) or x < 1
                                                       for x in v):
        raise DtoolsError(f"{key} must be a list of positive integers, got {v!r}")
    return list(v)


def _types(config: dict[str, Any], key: str, n: int) -> list[str]:
    v = config.get(key)
    if not isinstance(v, list | tuple) or len(v) != n:
        raise DtoolsError(f"{key} must list one block type per level ({n}), got {v!r}")
    return list(v)


def from_unet2d_config(config: dict[str, Any]) -> UNetConfig:
    """The dtools U-Net config of a UNet2DModel config.json, or a DtoolsError naming the field that
    dtools' U-Net cannot express."""
    if config.get("_class_name", UNET_CLASS) != UNET_CLASS:
        raise DtoolsError(f"a {config['_class_name']}; dtools imports {UNET_CLASS} only")
    for key, required in FIXED.items():
        if config.get(key, required) != required:
            raise DtoolsError(f"{key} is {config[key]!r}; dtools' U-Net has {required!r} only")
    if config.get("act_fn", "silu") not in ("silu", "swish"):
        raise DtoolsError(f"act_fn is {config['act_fn']!r}; dtools' U-Net uses silu only")
    widths = _ints(config, "block_out_channels")
    base = widths[0]
    if any(w % base for w in widths):
        raise DtoolsError(f"block_out_channels {widths}: each must be a multiple of the first")
    down = _types(config, "down_block_types", len(widths))
    for t in down:
        if t not in DOWN.values():
            raise DtoolsError(f"down_block_types holds {t!r}; dtools' U-Net has "
                              f"{' and '.join(DOWN.values())} only")
    attn = [t == DOWN[True] for t in down]
    up = _types(config, "up_block_types", len(widths))
    if up != [UP[a] for a in reversed(attn)]:
        raise DtoolsError(f"up_block_types {up} do not mirror down_block_types {down}, as dtools' up "
                          "path does")
    size = config.get("sample_size")
    if isinstance(size, list | tuple) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    size = _int({"sample_size": size}, "sample_size")
    in_ch, out_ch = _int(config, "in_channels", 3), _int(config, "out_channels", 3)
    if out_ch != in_ch:
        raise DtoolsError(f"out_channels {out_ch} differs from in_channels {in_ch}; dtools' U-Net maps an "
                          "image to a tensor of its own shape")
    groups = _int(config, "norm_num_groups", 32)
    if config.get("attn_norm_num_groups") not in (None, groups):
        raise DtoolsError(f"attn_norm_num_groups {config['attn_norm_num_groups']!r} differs from "
                          f"norm_num_groups {groups}; dtools' attention uses the same groups")
    temb = config.get("time_embedding_dim") or 4 * base
    if not isinstance(temb, int) or temb % base:
        raise DtoolsError(f"time_embedding_dim {temb!r} is not a multiple of block_out_channels[0] = {base}")
    mid_attention = config.get("add_attention", True)
    num_classes = _classes(config)
    head_dim = config.get("attention_head_dim", 8)
    attending = [w for w, a in zip(widths, attn, strict=True) if a] + ([widths[-1]] if mid_attention else [])
    if head_dim is not None:
        head_dim = _int(config, "attention_head_dim")
        if any(w % head_dim for w in attending):
            raise DtoolsError(f"attention_head_dim {head_dim} does not divide the attention widths "
                              f"{attending}")
    cfg = UNetConfig(
        image_size=size, in_channels=in_ch, base_channels=base, channel_mult=tuple(w // base for w in widths),
        num_res_blocks=_int(config, "layers_per_block", 2),
        attention_resolutions=tuple(size // 2**i for i, a in enumerate(attn) if a),
        num_heads=1 if head_dim is None else UNetConfig.num_heads,  # None: one head as wide as the block
        head_channels=0 if head_dim is None else head_dim, dropout=config.get("dropout", 0.0),
        norm_groups=groups, time_embed_mult=temb // base, mid_attention=mid_attention,
        num_classes=num_classes,
    )
    return cfg.validate()


def _classes(config: dict[str, Any]) -> int:
    """The classes of a class-conditional UNet2DModel that dtools exported (its last class embedding is
    the null class); 0 for an unconditional one; a refusal for any other class embedding."""
    k = config.get("num_class_embeds")
    if k is None:
        return 0
    k = _int(config, "num_class_embeds")
    if config.get(NULL_CLASS_KEY) != k - 1 or k < 2:
        raise DtoolsError(f"num_class_embeds {k}: a class-conditional model without a null class (dtools' "
                          f"{NULL_CLASS_KEY}); dtools imports only the class-conditional models it exported")
    return k - 1


# ---------------------------------------------------------------------------------------------
# The weights: (dtools module, diffusers module, kind); {i} and {j} are the same indices on both sides.

MODULES = [
    ("time_mlp.0.", "time_embedding.linear_1.", "plain"),
    ("time_mlp.2.", "time_embedding.linear_2.", "plain"),
    ("class_embed.", "class_embedding.", "plain"),
    ("conv_in.", "conv_in.", "plain"),
    ("down.{i}.blocks.{j}.", "down_blocks.{i}.resnets.{j}.", "res"),
    ("down.{i}.attns.{j}.", "down_blocks.{i}.attentions.{j}.", "attn"),
    ("downsample.{i}.conv.", "down_blocks.{i}.downsamplers.0.conv.", "plain"),
    ("mid1.", "mid_block.resnets.0.", "res"),
    ("mid_attn.", "mid_block.attentions.0.", "attn"),
    ("mid2.", "mid_block.resnets.1.", "res"),
    ("up.{i}.blocks.{j}.", "up_blocks.{i}.resnets.{j}.", "res"),
    ("up.{i}.attns.{j}.", "up_blocks.{i}.attentions.{j}.", "attn"),
    ("upsample.{i}.conv.", "up_blocks.{i}.upsamplers.0.conv.", "plain"),
    ("norm_out.", "conv_norm_out.", "plain"),
    ("conv_out.", "conv_out.", "plain"),
]
RES_LEAVES = {"emb.": "time_emb_proj.", "skip.": "conv_shortcut."}  # the rest have the same names
QKV = ("to_q", "to_k", "to_v")  # dtools' qkv conv holds them in this order, each (heads, C/heads)
# the names of diffusers' deprecated attention block, which diffusers itself still renames on loading
OLD_ATTN = {"query.": "to_q.", "key.": "to_k.", "value.": "to_v.", "proj_attn.": "to_out.0."}


def _regex(template: str) -> re.Pattern:
    return re.compile(re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{j\}", r"(?P<j>\d+)")
                      + r"(?P<leaf>.+)$")


_PATTERNS = [(_regex(d), _regex(h), d, h, kind) for d, h, kind in MODULES]


def _split(key: str, side: int) -> tuple[str, str, str]:
    """(the other side's module prefix, kind, leaf) of a state-dict key of side 0 (dtools) or 1
    (diffusers)."""
    for *patterns, d, h, kind in _PATTERNS:
        m = patterns[side].match(key)
        if m:
            groups = {k: v for k, v in m.groupdict().items() if k != "leaf"}
            return (h if side == 0 else d).format(**groups), kind, m["leaf"]
    raise DtoolsError(f"the weight {key!r} has no place in dtools' U-Net")


def to_diffusers_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A dtools U-Net state dict under UNet2DModel's keys (new tensors; the input is untouched)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        prefix, kind, leaf = _split(key, 0)
        module, _, param = leaf.rpartition(".")
        if kind == "res":
            out[prefix + RES_LEAVES.get(module + ".", module + ".") + param] = value.clone()
        elif kind == "attn" and module == "qkv":  # (3C, C, 1, 1) -> three (C, C); (3C,) -> three (C,)
            for name, part in zip(QKV, value.chunk(3, dim=0), strict=True):
                out[f"{prefix}{name}.{param}"] = part.flatten(1).clone() if part.ndim == 4 else part.clone()
        elif kind == "attn" and module == "proj":  # a 1x1 conv's (C, C, 1, 1) is a Linear's (C, C)
            out[f"{prefix}to_out.0.{param}"] = value.flatten(1).clone() if value.ndim == 4 else value.clone()
        elif kind == "attn":
            out[f"{prefix}group_norm.{param}"] = value.clone()
        else:
            out[prefix + leaf] = value.clone()
    return out


def from_diffusers_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A UNet2DModel state dict under dtools' keys, float32. Keys that have no place in dtools' U-Net
    are a DtoolsError; whether the rest fits a config is for `load_state_dict` to say."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if not value.is_floating_point():
            raise DtoolsError(f"the weight {key!r} is {value.dtype}, not a floating-point tensor")
        value = value.float()
        prefix, kind, leaf = _split(key, 1)
        if kind == "attn":
            old = next((o for o in OLD_ATTN if leaf.startswith(o)), None)
            leaf = OLD_ATTN[old] + leaf[len(old):] if old else leaf
        module, _, param = leaf.rpartition(".")
        if kind == "res":
            back = {v: k for k, v in RES_LEAVES.items()}
            out[prefix + back.get(module + ".", module + ".") + param] = value
        elif kind == "attn" and module in QKV:
            qkv.setdefault((prefix, param), {})[module] = value
        elif kind == "attn" and module == "to_out.0":
            out[f"{prefix}proj.{param}"] = value[..., None, None] if value.ndim == 2 else value
        elif kind == "attn" and module == "group_norm":
            out[f"{prefix}norm.{param}"] = value
        elif kind == "attn":
            raise DtoolsError(f"the weight {key!r} has no place in dtools' attention")
        else:
            out[prefix + leaf] = value
    for (prefix, param), parts in qkv.items():
        missing = [n for n in QKV if n not in parts]
        if missing:
            raise DtoolsError(f"the attention at {prefix[:-1]!r} lacks its {missing[0]}.{param}")
        w = torch.cat([parts[n] for n in QKV], dim=0)  # (3C, C) or (3C,)
        out[f"{prefix}qkv.{param}"] = w[..., None, None] if w.ndim == 2 else w
    return out


# ---------------------------------------------------------------------------------------------
# The scheduler


def scheduler_config(
    betas: np.ndarray, parameterization: str, variance: str = "posterior", clip: bool = True
) -> dict[str, Any]:
    """DDPMScheduler's scheduler_config.json: the exact float64 betas as trained_betas (JSON floats
    round-trip), the prediction type, the fixed variance and dtools sample's defaults (clipping x0 to
    [-1, 1], trailing timesteps)."""
    betas = validate_betas(betas)
    if parameterization not in PREDICTION_TYPE:  # "edm": its c_in has no place in DDPMScheduler
        raise DtoolsError(f"diffusers has no prediction_type for the parameterization {parameterization!r}; "
                          f"its DDPMScheduler reads models of {', '.join(PREDICTION_TYPE)}")
    return {
        "_class_name": SCHEDULER_CLASS, "_diffusers_version": DIFFUSERS_VERSION,
        "num_train_timesteps": int(betas.shape[0]), "trained_betas": [float(b) for b in betas],
        "beta_schedule": "linear", "beta_start": float(betas[0]), "beta_end": float(betas[-1]),  # unused
        "prediction_type": PREDICTION_TYPE[parameterization], "variance_type": VARIANCE_TYPE[variance],
        "clip_sample": bool(clip), "clip_sample_range": 1.0, "thresholding": False,
        "timestep_spacing": "trailing", "steps_offset": 0, "rescale_betas_zero_snr": False,
    }


def _squaredcos_cap_v2(T: int, beta_start: float, beta_end: float) -> np.ndarray:
    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return np.array([min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), 0.999) for i in range(T)])


# diffusers' named schedules with its own formulas, in float64 (diffusers rounds them to float32)
BETA_SCHEDULES = {
    "linear": lambda T, b0, b1: np.linspace(b0, b1, T, dtype=np.float64),
    "scaled_linear": lambda T, b0, b1: np.linspace(b0**0.5, b1**0.5, T, dtype=np.float64) ** 2,
    "squaredcos_cap_v2": _squaredcos_cap_v2,
    "sigmoid": lambda T, b0, b1: 1 / (1 + np.exp(-np.linspace(-6, 6, T, dtype=np.float64))) * (b1 - b0) + b0,
}


def read_scheduler(config: dict[str, Any]) -> tuple[np.ndarray, str, str]:
    """(betas float64 [T], parameterization, variance) of a diffusers scheduler config; trained_betas as
    written, named schedules recomputed in float64 with diffusers' formulas."""
    cls = config.get("_class_name")
    if cls not in SCHEDULERS:
        raise DtoolsError(f"a {cls!r} scheduler; dtools reads the betas of {', '.join(SCHEDULERS)}")
    T = _int(config, "num_train_timesteps", 1000)
    trained = config.get("trained_betas")
    if trained is not None:
        if not isinstance(trained, list) or not all(isinstance(b, int | float) for b in trained):
            raise DtoolsError("trained_betas must be a list of numbers")
        if len(trained) != T:
            raise DtoolsError(f"trained_betas holds {len(trained)} values for num_train_timesteps {T}")
        betas = np.asarray(trained, dtype=np.float64)
    else:
        name = config.get("beta_schedule", "linear")
        if name not in BETA_SCHEDULES:
            raise DtoolsError(f"beta_schedule {name!r}; dtools reads {', '.join(BETA_SCHEDULES)} or "
                              "trained_betas")
        b0, b1 = config.get("beta_start", 0.0001), config.get("beta_end", 0.02)
        if not all(isinstance(b, int | float) and 0 < b < 1 for b in (b0, b1)):
            raise DtoolsError(f"beta_start and beta_end must lie in (0, 1), got {b0!r} and {b1!r}")
        betas = BETA_SCHEDULES[name](T, float(b0), float(b1))
    if config.get("rescale_betas_zero_snr", False):
        betas = rescale_zero_terminal_snr(betas)  # Lin et al.'s Algorithm 1, as diffusers applies it
    betas = validate_betas(betas, "the scheduler's betas")
    back = {v: k for k, v in PREDICTION_TYPE.items()}
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in back:
        raise DtoolsError(f"prediction_type {prediction!r}; dtools has {', '.join(back)}")
    variance = config.get("variance_type", "fixed_small")
    if variance not in VARIANCE_OF:
        raise DtoolsError(f"variance_type {variance!r} is learned by the network; dtools' U-Net predicts no "
                          "variance")
    return betas, back[prediction], VARIANCE_OF[variance]
