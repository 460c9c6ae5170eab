"""The measurements behind dtools.unet's two per-call kernel choices (docs/performance.md).

    python bench/bench_kernels.py            # CPU, the sizes of the presets
    python bench/bench_kernels.py --toy      # seconds: checks that it runs

1. GroupNorm, forward + backward, on NCHW input, on channels-last input (PyTorch's kernels), and on
   channels-last input with the backward on NCHW copies (`unet_kernels.GroupNorm` in a CPU training step).
2. Self-attention over L = H*W positions, as SDPA and as matmuls + fp32 softmax (`unet_kernels.attend`),
   training (forward + backward) and no-grad forward, with q, k, v laid out as `unet.Attention` makes
   them from a channels-last tensor. `unet_kernels.MATMUL_ATTENTION_MAX_LEN` is read off this table.
fp32 and bf16 autocast; medians of interleaved rounds (bench/benchlib.py).
"""

from __future__ import annotations

import argparse
import contextlib

import benchlib
import torch
import torch.nn.functional as F

from dtools import unet_kernels

CL = torch.channels_last


def autocast(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def group_norm_cases(shape: tuple[int, ...], bf16: bool, reps: int) -> list[str]:
    n, c, h, w = shape
    groups = min(32, c // 2)
    weight = torch.ones(c, requires_grad=True)
    bias = torch.zeros(c, requires_grad=True)
    x32 = torch.randn(shape)
    g = torch.randn(shape)

    def step(x, fn):
        x = x.detach().requires_grad_(True)
        with autocast(bf16):
            y = fn(x)
        cl = unet_kernels.is_channels_last(y)
        y.backward(g.to(y.dtype).contiguous(memory_format=CL) if cl else g.to(y.dtype))

    dtype = torch.bfloat16 if bf16 else torch.float32
    nchw, cl = x32.to(dtype), x32.to(dtype).contiguous(memory_format=CL)
    plain = lambda x: F.group_norm(x, groups, weight, bias)  # noqa: E731
    trick = lambda x: unet_kernels._GroupNormNCHWBackward.apply(x, weight, bias, groups, 1e-5)  # noqa: E731
    t = benchlib.interleaved({"nchw": lambda: step(nchw, plain), "cl": lambda: step(cl, plain),
                              "cl+nchw-bwd": lambda: step(cl, trick)}, reps)
    ms = {k: t.median(k) * 1e3 for k in t.times}
    return [f"GroupNorm {'bf16' if bf16 else 'fp32'} {'x'.join(map(str, shape))}", f"{ms['nchw']:.2f}",
            f"{ms['cl']:.2f}", f"{ms['cl+nchw-bwd']:.2f}"]


def attention_cases(length: int, d: int, heads: int, batch: int, bf16: bool, reps: int) -> list[str]:
    c = heads * d
    dtype = torch.bfloat16 if bf16 else torch.float32
    # q, k, v as unet.Attention views them in a channels-last qkv tensor: (B, HW, 3, heads, d) permuted
    qkv = torch.randn(batch, length, 3, heads, d).to(dtype)
    g = torch.randn(batch, heads, length, d).to(dtype)

    def sdpa(q, k, v):
        return F.scaled_dot_product_attention(q, k, v)

    def matmul(q, k, v):
        scores = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5
        return torch.matmul(torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype), v)

    def train(fn):
        x = qkv.detach().requires_grad_(True)
        q, k, v = x.permute(2, 0, 3, 1, 4)
        with autocast(bf16):
            out = fn(q, k, v)
        out.backward(g.to(out.dtype))

    def forward(fn):
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        with torch.no_grad(), autocast(bf16):
            fn(q, k, v)

    t = benchlib.interleaved({"train sdpa": lambda: train(sdpa), "train matmul": lambda: train(matmul),
                              "fwd sdpa": lambda: forward(sdpa), "fwd matmul": lambda: forward(matmul)}, reps)
    ms = {k: t.median(k) * 1e3 for k in t.times}
    return [f"attention {'bf16' if bf16 else 'fp32'} L={length} d={d} heads={heads} B={batch} (C={c})",
            f"{ms['train sdpa']:.2f}", f"{ms['train matmul']:.2f}",
            f"{ms['train sdpa'] / ms['train matmul']:.2f}", f"{ms['fwd sdpa']:.2f}",
            f"{ms['fwd matmul']:.2f}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--toy", action="store_true", help="tiny sizes, 2 rounds (a smoke test)")
    ap.add_argument("--reps", type=int, default=9)
    args = ap.parse_args()
    reps = 2 if args.toy else args.reps
    torch.manual_seed(0)
    gn_shapes = [(2, 8, 4, 4)] if args.toy else [(16, 64, 32, 32), (16, 128, 16, 16), (16, 256, 16, 16),
                                                  (32, 64, 32, 32)]
    rows = [group_norm_cases(s, bf16, reps) for bf16 in (False, True) for s in gn_shapes]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ms per call, medians of {reps}")
    print(benchlib.table(rows, ["GroupNorm fwd+bwd", "NCHW", "channels-last", "channels-last, NCHW bwd"]))
    # (L, d, heads, batch): the presets' attention levels (cpu32 at 32x32: L=64 d=32; (32,64,128) widths:
    # L=64 d=64; seed64 at 64x64: L=256 d=64) and the lengths around them, 4096 tokens per batch
    att = [(16, 8, 2, 2)] if args.toy else [
        (16, 32, 2, 256), (64, 32, 2, 64), (64, 64, 2, 64), (144, 64, 2, 28), (256, 32, 2, 16),
        (256, 64, 4, 16), (1024, 64, 2, 4)]
    print()
    rows = [attention_cases(*a, bf16, reps) for bf16 in (False, True) for a in att]
    print(benchlib.table(rows, ["attention", "train SDPA", "train matmul", "SDPA/matmul", "fwd SDPA",
                                "fwd matmul"]))


if __name__ == "__main__":
    main()
