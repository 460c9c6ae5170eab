"""The U-Net's speed paths (channels-last, GroupNorm's NCHW backward, matmul attention) compute what
the plain network computes, keep channels-last throughout, and are chosen where they were measured
to pay (docs/performance.md)."""

from __future__ import annotations

import copy

import pytest
import torch

from dtools import unet_kernels as unet
from dtools.unet import UNet, UNetConfig

pytestmark = pytest.mark.usefixtures("one_thread")

CL = torch.channels_last


def randomized_net(**kw) -> UNet:
    """8x8 images, attention at 4x4 and in the middle, every weight random (no zero-init): gradients
    reach every layer and attention changes the output."""
    cfg = UNetConfig(**{**dict(image_size=8, in_channels=3, base_channels=8, channel_mult=(1, 2),
                               num_res_blocks=1, attention_resolutions=(4,), num_heads=2, dropout=0.0,
                               norm_groups=4), **kw})
    torch.manual_seed(0)
    net = UNet(cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return net.train()


def step(net: UNet, x: torch.Tensor, t: torch.Tensor, g: torch.Tensor, bf16: bool = False):
    """Output and parameter gradients of one backward pass of sum(out * g)."""
    net.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = net(x, t)
    (out.float() * g).sum().backward()
    return out, {n: p.grad.clone() for n, p in net.named_parameters()}


def inputs(layout=torch.contiguous_format):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4, 3, 8, 8, generator=gen).contiguous(memory_format=layout)
    return x, torch.tensor([0, 10, 500, 999]), torch.randn(4, 3, 8, 8, generator=gen)


def force(monkeypatch, fast: bool) -> None:
    """Take the speed paths (on channels-last input) or the plain ones, whatever the rules say."""
    monkeypatch.setattr(unet, "fast_group_norm", lambda x: fast and unet.is_channels_last(x))
    monkeypatch.setattr(unet, "matmul_attention", lambda q: fast)


def test_speed_paths_match_the_plain_network_in_fp32(monkeypatch):
    plain = randomized_net()
    fast = copy.deepcopy(plain).to(memory_format=CL)
    x, t, g = inputs()
    force(monkeypatch, False)
    want, want_grads = step(plain, x, t, g)
    force(monkeypatch, True)
    got, got_grads = step(fast, x.contiguous(memory_format=CL), t, g)
    assert unet.is_channels_last(got)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert got_grads.keys() == want_grads.keys()
    for name in want_grads:
        torch.testing.assert_close(got_grads[name], want_grads[name], rtol=1e-4, atol=1e-4, msg=name)
    assert list(fast.state_dict()) == list(plain.state_dict())


BF16_UNIT = 2.0**-8  # bf16's unit roundoff


def test_speed_paths_under_bf16_autocast_are_as_accurate_as_plain_bf16(monkeypatch):
    """What a CPU bf16 training step runs (the rules choose both speed paths here) is as close to the
    fp32 network as the plain network under the same bf16 autocast. The bound is relative to that
    plain error because bf16's error depends on the CPU: with native bf16 (AMX, AVX-512 bf16) the
    worst gradient was 0.040 (plain 0.034), on an AVX2-only CPU, where bf16 is emulated, 0.060 (plain
    0.074): a fixed 0.05 held on one and failed on the other."""
    plain = randomized_net()
    fast = copy.deepcopy(plain).to(memory_format=CL)
    x, t, g = inputs()
    want, want_grads = step(plain, x, t, g)
    got, got_grads = step(fast, x.contiguous(memory_format=CL), t, g, bf16=True)
    force(monkeypatch, False)
    ref, ref_grads = step(copy.deepcopy(plain), x, t, g, bf16=True)  # NCHW, the plain paths, bf16
    rel = lambda a, b: float((a.detach().float() - b.detach()).norm() / b.detach().norm())  # noqa: E731
    worst = max(rel(got_grads[n], want_grads[n]) for n in want_grads)
    worst_plain = max(rel(ref_grads[n], want_grads[n]) for n in want_grads)
    assert rel(got, want) < 4 * BF16_UNIT and rel(ref, want) < 4 * BF16_UNIT
    assert worst < 1.5 * worst_plain + BF16_UNIT, (worst, worst_plain)


def test_the_rules_choose_the_measured_paths():
    def x(dtype=torch.bfloat16, layout=CL, length=64):
        return torch.zeros(2, 4, length, 8, dtype=dtype).contiguous(memory_format=layout)

    assert unet.fast_group_norm(x())
    assert not unet.fast_group_norm(x(dtype=torch.float32))  # fp32: the copies cost more than they save
    assert not unet.fast_group_norm(x(layout=torch.contiguous_format))
    with torch.no_grad():
        assert not unet.fast_group_norm(x())
        assert not unet.matmul_attention(x())  # sampling: SDPA
    assert unet.matmul_attention(x(length=unet.MATMUL_ATTENTION_MAX_LEN))
    assert not unet.matmul_attention(x(length=unet.MATMUL_ATTENTION_MAX_LEN + 1))
    assert not unet.matmul_attention(x(dtype=torch.float32))


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("grad", [False, True])
def test_every_layer_sees_channels_last(bf16, grad):
    """Skips concatenated, upsampled, attention output: no layer gets an NCHW tensor to reorder."""
    net = randomized_net().to(memory_format=CL)
    seen = []
    def hook(module, args, name):
        seen.append((name, unet.is_channels_last(args[0])))

    for name, m in net.named_modules():
        if isinstance(m, torch.nn.Conv2d | torch.nn.GroupNorm):
            m.register_forward_pre_hook(lambda m, args, name=name: hook(m, args, name))
    x, t, _ = inputs(CL)
    with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = net(x, t)
    assert len(seen) > 20
    assert [name for name, cl in seen if not cl] == []
    assert unet.is_channels_last(out)
