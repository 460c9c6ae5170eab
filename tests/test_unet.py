"""The U-Net: shapes, config validation, receptive field, and compile on/off agreement."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from dtools.errors import DtoolsError
from dtools.train.presets import preset_config
from dtools.unet import UNet, UNetConfig, timestep_embedding

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**kw) -> UNetConfig:
    base = dict(image_size=8, in_channels=3, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                attention_resolutions=(4,), num_heads=2, dropout=0.0, norm_groups=4)
    return UNetConfig(**{**base, **kw})


def without_norms(model: UNet) -> UNet:
    """GroupNorm's statistics span the whole image, so they alone make every output depend on every
    input; remove them to see the reach of the convolutions and attention."""
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, torch.nn.GroupNorm):
                setattr(module, child_name, torch.nn.Identity())
    return model


def randomized(model: UNet, seed: int = 0) -> UNet:
    """Give the zero-initialized output convs random weights, so gradients flow end to end."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


@pytest.mark.parametrize("size,channels", [(16, 3), (32, 3), (32, 1), (24, 3)])
def test_output_shape_follows_input(size, channels):
    model = UNet(preset_config("auto", size, channels)).eval()
    x = torch.randn(2, channels, size, size)
    with torch.no_grad():
        out = model(x, torch.tensor([0, 999]))
    assert out.shape == x.shape and out.dtype == torch.float32


def test_untrained_network_predicts_zero():
    # The output conv and every block's last conv start at zero (each block starts as the identity).
    model = UNet(tiny()).eval()
    with torch.no_grad():
        assert torch.count_nonzero(model(torch.randn(2, 3, 8, 8), torch.tensor([1, 2]))) == 0


@pytest.mark.parametrize("cfg", [tiny(), preset_config("cpu16", 16, 3), preset_config("cpu32", 32, 3)],
                         ids=["tiny", "cpu16", "cpu32"])
def test_receptive_field_covers_the_image(cfg):
    """One output pixel (a corner, the hardest case) depends on every input pixel."""
    model = without_norms(randomized(UNet(cfg)))
    x = torch.randn(1, cfg.in_channels, cfg.image_size, cfg.image_size, requires_grad=True)
    model(x, torch.tensor([10]))[0, :, 0, 0].sum().backward()
    reach = x.grad.abs().sum(dim=1)[0]  # (H, W)
    assert torch.count_nonzero(reach) == cfg.image_size**2


def test_receptive_field_test_can_fail():
    # Without attention or downsampling, a dozen 3x3 convs do not reach across 32x32 pixels.
    cfg = tiny(image_size=32, channel_mult=(1,), attention_resolutions=(), mid_attention=False)
    model = without_norms(randomized(UNet(cfg)))
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    model(x, torch.tensor([10]))[0, :, 0, 0].sum().backward()
    reach = x.grad.abs().sum(dim=1)[0]  # (H, W)
    assert reach[0, 0] > 0 and reach[-1, -1] == 0


def test_timestep_changes_the_output_and_images_are_independent():
    model = randomized(UNet(tiny()))
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        a = model(x, torch.tensor([0, 0, 0]))
        b = model(x, torch.tensor([0, 500, 0]))
        one = model(x[1:2], torch.tensor([500]))
    assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2])
    assert not torch.allclose(a[1], b[1])
    torch.testing.assert_close(one[0], b[1], rtol=1e-5, atol=1e-5)  # no mixing across the batch


def test_timestep_embedding_exact():
    emb = timestep_embedding(torch.tensor([0, 3]), 6)
    assert emb.shape == (2, 6)
    assert emb[0].tolist() == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    freqs = [1.0, 10000 ** (-1 / 3), 10000 ** (-2 / 3)]
    want = [math.cos(3 * f) for f in freqs] + [math.sin(3 * f) for f in freqs]
    assert emb[1].tolist() == pytest.approx(want, abs=1e-6)
    assert timestep_embedding(torch.tensor([1]), 5).shape == (1, 5)


def test_size_must_divide_by_downsampling_factor():
    with pytest.raises(DtoolsError, match="not divisible by 4"):
        UNet(preset_config("cpu32", 30, 3))
    with pytest.raises(DtoolsError, match="not divisible"):
        tiny(image_size=9).validate()


@pytest.mark.parametrize("change,match", [
    ({"in_channels": 4}, "in_channels"),
    ({"attention_resolutions": (2,)}, "never reached"),
    ({"norm_groups": 3}, "GroupNorm"),
    ({"num_heads": 3}, "attention heads"),
    ({"dropout": 1.0}, "dropout"),
    ({"channel_mult": ()}, "channel_mult"),
    ({"channel_mult": (1, 0)}, "channel_mult"),
    ({"base_channels": "64"}, "integer"),
    ({"num_res_blocks": 0}, "num_res_blocks"),
])
def test_config_validation(change, match):
    d = tiny().to_dict()
    d.update({k: list(v) if isinstance(v, tuple) else v for k, v in change.items()})
    with pytest.raises(DtoolsError, match=match):
        UNetConfig.from_dict(d)


def test_from_dict_round_trip_and_unknown_keys():
    cfg = preset_config("cpu32", 32, 1)
    d = dataclasses.asdict(cfg)
    assert UNetConfig.from_dict(d) == cfg
    import json

    assert UNetConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg  # lists become tuples again
    with pytest.raises(DtoolsError, match="unknown key"):
        UNetConfig.from_dict({**d, "use_scale_shift_norm": True})
    with pytest.raises(DtoolsError, match="JSON object"):
        UNetConfig.from_dict([1, 2])


def test_head_channels_override_num_heads():
    cfg = tiny(head_channels=4)
    assert cfg.heads_for(16) == 4
    model = UNet(cfg)
    assert model.mid_attn.heads == 4


def test_compile_in_place_matches_eager_and_keeps_keys():
    torch.manual_seed(0)
    cfg = tiny(image_size=8, channel_mult=(1,), attention_resolutions=(8,))
    model = randomized(UNet(cfg))
    keys = list(model.state_dict())
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 700])
    with torch.no_grad():
        eager = model(x, t)
        model.compile()
        compiled = model(x, t)
    assert list(model.state_dict()) == keys  # no "_orig_mod." prefixes
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)
