"""The U-Net's two CPU kernel choices (measured by bench/bench_kernels.py; the numbers are in
docs/performance.md), made per call from what a forward pass is for: `GroupNorm` runs its backward
on NCHW copies where PyTorch's channels-last bf16 backward is slow (`fast_group_norm`), and `attend`
writes attention out as matmuls where SDPA's fused bf16 backward is slow (`matmul_attention`). Both
keep the parameters and state-dict keys of the plain layers and agree with them to float rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# The longest attention sequence (H*W) at which a bf16 CPU training step writes attention out as
# matmuls: SDPA's fused bf16 backward is slow at short lengths (2.8-11x slower than the matmuls at
# 144, 64 and 16 positions), 1.3x slower at 256, where the matmuls' (L, L) scores would also add a
# fifth to the peak memory of a seed64 step; at 1024 SDPA is 2x faster. In fp32, and without
# gradients, SDPA is as fast or faster at every length measured.
MATMUL_ATTENTION_MAX_LEN = 144


def is_channels_last(x: torch.Tensor) -> bool:
    """A 4-d tensor laid out NHWC (and not also NCHW-contiguous, as when H = W = 1 or C = 1)."""
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _cpu_bf16_training(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype == torch.bfloat16 and torch.is_grad_enabled()


def fast_group_norm(x: torch.Tensor) -> bool:
    """Whether GroupNorm runs its backward on NCHW copies: for a channels-last bf16 input in a CPU
    training step, where PyTorch's channels-last bf16 backward is 1.3-3x slower than that (in fp32 the
    copies cost more than they save)."""
    return _cpu_bf16_training(x) and is_channels_last(x)


def matmul_attention(q: torch.Tensor) -> bool:
    """Whether attention over q (B, heads, L, d) is written out as matmuls and an fp32 softmax instead
    of SDPA: in bf16 CPU training steps up to MATMUL_ATTENTION_MAX_LEN positions."""
    return _cpu_bf16_training(q) and q.shape[-2] <= MATMUL_ATTENTION_MAX_LEN


class _GroupNormNCHWBackward(torch.autograd.Function):
    """F.group_norm's forward as it is (fast in channels-last), its backward on NCHW copies; the input's
    gradient goes back channels-last."""

    @staticmethod
    def forward(ctx, x, weight, bias, groups: int, eps: float):
        n, c, h, w = x.shape
        y, mean, rstd = torch.ops.aten.native_group_norm(x, weight, bias, n, c, h * w, groups, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.groups = groups
        return y

    @staticmethod
    def backward(ctx, gy):
        x, weight, mean, rstd = ctx.saved_tensors
        n, c, h, w = x.shape
        gx, gw, gb = torch.ops.aten.native_group_norm_backward(
            gy.contiguous(), x.contiguous(), mean, rstd, weight, n, c, h * w, ctx.groups,
            list(ctx.needs_input_grad[:3]),
        )
        if gx is not None:
            gx = gx.contiguous(memory_format=torch.channels_last)
        return gx, gw, gb, None, None


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm (same parameters, same state-dict keys) that takes the NCHW backward when
    `fast_group_norm` says so."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fast_group_norm(x):
            return _GroupNormNCHWBackward.apply(x, self.weight, self.bias, self.num_groups, self.eps)
        return super().forward(x)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over (B, heads, L, d), as SDPA or as matmuls (`matmul_attention`),
    the softmax then in fp32."""
    if not matmul_attention(q):
        return F.scaled_dot_product_attention(q, k, v)
    scores = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5  # (B, heads, L, L)
    return torch.matmul(torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype), v)
