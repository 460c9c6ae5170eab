"""The one mapping between dtools' U-Net and diffusers' UNet2DModel + scheduler, checked against diffusers
itself (a test-only dependency; nothing is downloaded: every model is built here)."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be downloaded

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from diffusers.schedulers.scheduling_ddpm import rescale_zero_terminal_snr

from dtools.diffusers_format import (
    FIXED,
    from_diffusers_state,
    from_unet2d_config,
    read_scheduler,
    scheduler_config,
    to_diffusers_state,
    to_unet2d_config,
)
from dtools.diffusion import alphas_cumprod
from dtools.errors import DtoolsError
from dtools.schedules import make_schedule
from dtools.unet import UNet, UNetConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**kw) -> UNetConfig:
    base = dict(image_size=8, in_channels=3, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                attention_resolutions=(4,), num_heads=2, dropout=0.0, norm_groups=4)
    return UNetConfig(**{**base, **kw})


CONFIGS = {
    "attention at 4x4 and mid, 2 heads": tiny(),
    "grey, 3 levels, 2 blocks, attention at 8 and 4, head_channels, no mid attention, temb x2": tiny(
        in_channels=1, channel_mult=(1, 2, 3), num_res_blocks=2, attention_resolutions=(8, 4),
        head_channels=4, mid_attention=False, time_embed_mult=2, dropout=0.1),
    "no attention anywhere": tiny(attention_resolutions=(), mid_attention=False, norm_groups=8),
}


def random_unet(cfg: UNetConfig, seed: int = 0) -> UNet:
    """A U-Net with random, non-zero weights everywhere (a fresh one has zero output convs)."""
    torch.manual_seed(seed)
    net = UNet(cfg).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.2)
    return net


def twin(net: UNet) -> UNet2DModel:
    model = UNet2DModel.from_config(to_unet2d_config(net.cfg)).eval()
    model.load_state_dict(to_diffusers_state(net.state_dict()), strict=True)
    return model


@pytest.mark.parametrize("cfg", CONFIGS.values(), ids=CONFIGS.keys())
def test_outputs_agree_with_diffusers_to_float32_rounding(cfg):
    net = random_unet(cfg)
    model = twin(net)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in net.parameters())
    x = torch.randn(4, cfg.in_channels, 8, 8)
    t = torch.tensor([0, 1, 500, 999])
    with torch.no_grad():
        ours, theirs = net(x, t), model(x, t).sample
    assert ours.abs().mean() > 0.05  # a real output, not zeros
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cfg", CONFIGS.values(), ids=CONFIGS.keys())
def test_weights_and_config_round_trip(cfg):
    state = random_unet(cfg).state_dict()
    back = from_diffusers_state(to_diffusers_state(state))
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], v) for k, v in state.items())
    again = from_unet2d_config(dict(UNet2DModel.from_config(to_unet2d_config(cfg)).config))
    assert to_unet2d_config(again) == to_unet2d_config(cfg)  # the same network
    assert UNet(again).load_state_dict(back, strict=True)


def test_import_of_a_diffusers_built_model():
    """A UNet2DModel made by diffusers (its own initialisation and config defaults) maps onto dtools."""
    torch.manual_seed(1)
    model = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32),
                        layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                        up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=None,
                        norm_num_groups=8).eval()
    cfg = from_unet2d_config(dict(model.config))
    assert (cfg.base_channels, cfg.channel_mult, cfg.attention_resolutions) == (16, (1, 2), (4,))
    assert (cfg.num_heads, cfg.head_channels) == (1, 0)  # attention_head_dim None: one head
    net = UNet(cfg).eval()
    net.load_state_dict(from_diffusers_state(model.state_dict()), strict=True)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 700])
    with torch.no_grad():
        torch.testing.assert_close(net(x, t), model(x, t).sample, rtol=1e-5, atol=1e-5)


def test_old_attention_names_are_read():
    state = to_diffusers_state(random_unet(tiny()).state_dict())
    old = {k.replace(".to_q.", ".query.").replace(".to_k.", ".key.").replace(".to_v.", ".value.")
           .replace(".to_out.0.", ".proj_attn."): v for k, v in state.items()}
    assert old != state
    back = from_diffusers_state(old)
    assert all(torch.equal(back[k], v) for k, v in from_diffusers_state(state).items())


@pytest.mark.parametrize("cfg, field", [
    (tiny(channel_mult=(2, 4)), "channel_mult"),
    (tiny(channel_mult=(1, 2), attention_resolutions=(8,), num_heads=2), "num_heads"),  # 4- and 8-ch heads
    (tiny(channel_mult=(1, 3), head_channels=16, norm_groups=8), "head_channels"),  # 24 channels
])
def test_export_refuses_what_diffusers_cannot_express(cfg, field):
    with pytest.raises(DtoolsError, match=f"^{field}:"):
        to_unet2d_config(cfg)


BAD_CONFIGS = {
    "down_block_types": {"down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"]},
    "up_block_types": {"up_block_types": ["UpBlock2D", "UpBlock2D"]},
    "out_channels": {"out_channels": 6},
    "norm_eps": {"norm_eps": 1e-6},
    "flip_sin_to_cos": {"flip_sin_to_cos": False},
    "freq_shift": {"freq_shift": 1},
    "downsample_padding": {"downsample_padding": 0},
    "resnet_time_scale_shift": {"resnet_time_scale_shift": "scale_shift"},
    "act_fn": {"act_fn": "gelu"},
    "attention_head_dim": {"attention_head_dim": 3},
    "time_embedding_dim": {"time_embedding_dim": 20},
    "block_out_channels": {"block_out_channels": [8, 12]},
    "sample_size": {"sample_size": None},
    "UNet2DConditionModel": {"_class_name": "UNet2DConditionModel"},
}


@pytest.mark.parametrize("field", BAD_CONFIGS)
def test_import_refuses_what_dtools_cannot_express(field):
    config = {**to_unet2d_config(tiny()), **BAD_CONFIGS[field]}
    with pytest.raises(DtoolsError, match=field) as e:
        from_unet2d_config(config)
    assert "\n" not in str(e.value)


def test_fixed_fields_are_diffusers_defaults():
    """A key missing from a config.json means diffusers' default; FIXED holds exactly those defaults."""
    defaults = UNet2DModel.from_config({}).config
    assert {k: defaults[k] for k in FIXED} == FIXED


@pytest.mark.parametrize("parameterization, prediction", [("eps", "epsilon"), ("x0", "sample"),
                                                           ("v", "v_prediction")])
def test_scheduler_holds_the_exact_schedule(parameterization, prediction):
    betas = make_schedule("cosine", 100, zero_terminal_snr=parameterization == "v")
    config = scheduler_config(betas, parameterization, "beta", clip=False)
    sched = DDPMScheduler.from_config(config)
    assert sched.config.prediction_type == prediction and sched.config.variance_type == "fixed_large"
    assert not sched.config.clip_sample and sched.config.timestep_spacing == "trailing"
    assert torch.equal(sched.betas, torch.tensor(betas, dtype=torch.float32))  # diffusers keeps float32
    theirs = sched.alphas_cumprod.double().numpy()
    np.testing.assert_allclose(theirs, alphas_cumprod(betas), rtol=0, atol=1e-6)  # a float32 cumprod
    # and relative to diffusers' own float32 betas (1 - β loses digits in float32 where β nears 1)
    np.testing.assert_allclose(theirs, alphas_cumprod(sched.betas.double().numpy()), rtol=2e-6)
    assert DDIMScheduler.from_config(config).final_alpha_cumprod == 1.0  # x0 at the end, as dtools
    back, param, variance = read_scheduler(dict(sched.config))
    assert np.array_equal(back, betas) and (param, variance) == (parameterization, "beta")


@pytest.mark.parametrize("options", [
    {"beta_schedule": "linear"},
    {"beta_schedule": "linear", "beta_start": 0.001, "beta_end": 0.03, "num_train_timesteps": 300},
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    {"beta_schedule": "squaredcos_cap_v2"},
    {"beta_schedule": "sigmoid", "beta_start": 0.0001, "beta_end": 0.02},
])
def test_named_schedules_match_diffusers(options, tmp_path):
    sched = DDPMScheduler(**options)
    sched.save_config(tmp_path)  # the scheduler_config.json diffusers itself writes
    betas, _, _ = read_scheduler(json.loads((tmp_path / "scheduler_config.json").read_text()))
    assert betas.dtype == np.float64 and betas.shape == sched.betas.shape
    # diffusers computes in float32: the float64 values agree to its rounding
    np.testing.assert_allclose(betas, sched.betas.double().numpy(), rtol=3e-6, atol=1e-7)
    theirs = sched.alphas_cumprod.double().numpy()
    np.testing.assert_allclose(alphas_cumprod(betas), theirs, rtol=0, atol=1e-6)


def test_zero_terminal_snr_rescale_is_diffusers_algorithm(tmp_path):
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                          rescale_betas_zero_snr=True, prediction_type="v_prediction")
    sched.save_config(tmp_path)
    betas, param, _ = read_scheduler(json.loads((tmp_path / "scheduler_config.json").read_text()))
    assert param == "v" and betas[-1] == 1.0  # ᾱ_T = 0
    # diffusers' own function, run in float64 (its float32 run loses digits in 1 - ᾱ_t/ᾱ_{t-1})
    plain = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    np.testing.assert_allclose(betas, rescale_zero_terminal_snr(plain).numpy(), rtol=1e-12, atol=0)
    theirs = sched.alphas_cumprod.double().numpy()
    np.testing.assert_allclose(alphas_cumprod(betas), theirs, rtol=0, atol=1e-6)


@pytest.mark.parametrize("change, field", [
    ({"_class_name": "ScoreSdeVeScheduler"}, "ScoreSdeVeScheduler"),
    ({"variance_type": "learned_range"}, "variance_type"),
    ({"prediction_type": "flow"}, "prediction_type"),
    ({"trained_betas": [0.1, 0.2]}, "trained_betas"),
    ({"trained_betas": None, "beta_schedule": "laplace"}, "beta_schedule"),
])
def test_scheduler_refusals(change, field):
    config = {**scheduler_config(make_schedule("linear", 10), "eps"), **change}
    with pytest.raises(DtoolsError, match=field):
        read_scheduler(config)


def test_a_class_conditional_unet_agrees_with_diffusers_class_embedding():
    """num_classes classes and the null class export as num_class_embeds = num_classes + 1 (with the
    null class named, so that import takes it back) and predict the same with class_labels."""
    cfg = tiny(num_classes=3)
    net = random_unet(cfg)
    config = to_unet2d_config(cfg)
    assert config["num_class_embeds"] == 4 and config["dtools_null_class"] == 3
    model = twin(net)
    x, t, y = torch.randn(4, cfg.in_channels, 8, 8), torch.tensor([0, 1, 500, 999]), torch.arange(4)
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, class_labels=y).sample, net(x, t, y), rtol=1e-5, atol=1e-5)
    again = from_unet2d_config(dict(model.config))
    assert again.num_classes == 3
    back = from_diffusers_state(to_diffusers_state(net.state_dict()))
    assert UNet(again).load_state_dict(back, strict=True)
