"""U-Net speed: dtools' network against diffusers' UNet2DModel with the same widths, same run.

    python bench/bench_unet.py                  # CPU: seed64 at batch 8 and cpu32 at batch 32
    python bench/bench_unet.py --device cuda --batch 128 --compile

For each configuration it times, on the same device and in the same process, alternating between the
two networks, (a) a no-grad forward pass and (b) a training step (forward, MSE, backward, Adam) and
prints medians and the ratio dtools / diffusers (below 1 means dtools is faster). Parameter counts
are printed too, so a speed difference is not a size difference in disguise.

Needs diffusers (`pip install diffusers`, or `pip install -e '.[bench]'`); it is not a dependency of
dtools. This is a benchmark, not a test: nothing asserts on the numbers.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from dtools.diffusers_format import to_unet2d_config
from dtools.train.presets import preset_config
from dtools.unet import UNet, count_parameters


def diffusers_twin(cfg):
    """diffusers' UNet2DModel with dtools' widths, blocks per level, attention placement and groups: the
    config `dtools export` writes (dtools.diffusers_format, the one mapping)."""
    from diffusers import UNet2DModel

    return UNet2DModel.from_config(to_unet2d_config(cfg))


def timed(fn, sync) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def bench(preset: str, size: int, batch: int, device: torch.device, repeats: int, compile_: bool) -> None:
    cfg = preset_config(preset, size, 3)
    nets = {"dtools": UNet(cfg), "diffusers": diffusers_twin(cfg)}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    x = torch.randn(batch, 3, size, size, device=device)
    t = torch.randint(0, 1000, (batch,), device=device)
    steps = {}
    for name, net in nets.items():
        net.to(device)
        if compile_:
            net.compile()
        opt = torch.optim.Adam(net.parameters(), lr=1e-4)
        if name == "dtools":
            call = (lambda n: lambda: n(x, t))(net)
        else:
            call = (lambda n: lambda: n(x, t).sample)(net)

        def forward(call=call):
            with torch.no_grad():
                call()

        def train_step(call=call, opt=opt):
            loss = F.mse_loss(call(), x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        steps[name] = {"forward": forward, "train step": train_step}
    print(f"\n{preset} {size}x{size}, batch {batch}, {device.type}{' compiled' if compile_ else ''}")
    print(f"  parameters: dtools {count_parameters(nets['dtools']) / 1e6:.2f} M, "
          f"diffusers {count_parameters(nets['diffusers']) / 1e6:.2f} M")
    for what in ("forward", "train step"):
        for name in nets:  # warm-up (and compilation)
            for _ in range(2):
                steps[name][what]()
        times = {name: [] for name in nets}
        for _ in range(repeats):  # alternate, so drift hits both alike
            for name in nets:
                times[name].append(timed(steps[name][what], sync))
        med = {name: statistics.median(v) for name, v in times.items()}
        print(
            f"  {what:>10}: dtools {med['dtools'] * 1e3:8.1f} ms   diffusers {med['diffusers'] * 1e3:8.1f} ms"
            f"   ratio dtools/diffusers {med['dtools'] / med['diffusers']:.2f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch", type=int, default=0, help="batch (CPU default: 8 seed64, 32 cpu32)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="compile both networks in place first")
    args = ap.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    torch.manual_seed(0)
    gpu = device.type == "cuda"
    bench("seed64", 64, args.batch or (128 if gpu else 8), device, args.repeats, args.compile)
    bench("cpu32", 32, args.batch or (128 if gpu else 32), device, args.repeats, args.compile)


if __name__ == "__main__":
    main()
