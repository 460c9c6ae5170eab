"""Training and sampling speed of dtools against diffusers' UNet2DModel at matched sizes, one process.

    python bench/bench_speed.py                     # the CPU configurations of docs/performance.md
    python bench/bench_speed.py --configs seed32 --compile  # also --compile, on both sides
    python bench/bench_speed.py --toy               # seconds: checks that it runs (the CI test)
    python bench/bench_speed.py --configs gpu64,gpu32 --compile --reps 20   # on a CUDA GPU (gpu_check.sh)

dtools is measured on its default path, what `dtools train` and `dtools sample` do with no flags: the
Trainer of dtools.train (built on random images, the batch stream and augmentation included) and
Runtime.model_fn of its EMA network; with --compile also on its best flags. diffusers' UNet2DModel
with the same widths, blocks, attention placement and groups (bench_unet.diffusers_twin) runs a plain
loop (noising, forward, MSE, backward, clipping when dtools clips, fused Adam, EMA lerp) in fp32 and
bf16 autocast, the latter also channels-last (--diffusers-modes; with --compile also compiled); the
ratio is against the fastest of them. All
modes alternate round by round (bench/benchlib.py); peak memory is VmHWM of a fresh process per mode
(build, then 3 training steps); on CUDA it is the allocator's peak during one training step over what
was resident before it (the step's activations and temporaries). GFLOP/s count a training step as 3x
the forward FLOPs and are put against the best GEMM rate of this run in the same precision. On CUDA,
dtools' default path is already compiled (bf16, channels-last), so --compile adds only diffusers'
compiled mode; "first call s" is then the compile time.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import benchlib
import numpy as np
import torch
import torch.nn.functional as F

from dtools.runtime import resolve
from dtools.schedules import make_schedule
from dtools.unet import UNetConfig, count_parameters

CL = torch.channels_last
DIFFUSERS_MODES = ("fp32", "fp32-cl", "bf16", "bf16-cl")  # "-compiled" may follow any of them


@dataclass(frozen=True)
class Spec:
    """One configuration: dtools train options on top of a preset, image size, batch."""

    name: str
    preset: str
    size: int
    batch: int
    model: tuple = ()  # (UNetConfig field, value) pairs overriding the preset

    def options(self) -> dict:
        return {"preset": self.preset, "batch_size": self.batch, "sample_every": 0, **dict(self.model)}


SPECS = {  # the reference sizes (seed64, seed32), and the preset `dtools train` picks at 32x32
    "seed64": Spec("seed64", "seed64", 64, 16),
    "gpu64": Spec("gpu64", "seed64", 64, 128),  # the seed's run as the seed ran it: 64x64, batch 128
    "gpu32": Spec("gpu32", "seed64", 32, 256),  # the seed's network on 32x32 images, batch 256
    "seed32": Spec("seed32", "seed64", 32, 32),  # the seed's network on 32x32 images (attention at 8x8)
    "cpu32": Spec("cpu32", "cpu32", 32, 32),
    "w124": Spec("w124", "cpu32", 32, 32, (("channel_mult", (1, 2, 4)),)),  # widths (32, 64, 128)
}
TOY = Spec("toy", "cpu16", 8, 4, (("base_channels", 8), ("channel_mult", (1, 2)),
                                  ("attention_resolutions", (4,)), ("num_heads", 2)))


def train_config(spec: Spec, data: Path, out: Path, **options):
    """The TrainConfig `dtools train DATA -o OUT --preset ... --batch ...` would resolve (no files read)."""
    from dtools import train as training

    betas = make_schedule("cosine", 1000)
    return training.new_config(str(data), str(out), "cosine", betas, (256, spec.size, spec.size, 3),
                               {**spec.options(), **options})


# ---------------------------------------------------------------------------------------------
# dtools: the Trainer itself, on random images


class DtoolsSide:
    """dtools' training step and sampling call as `dtools train` / `dtools sample` run them."""

    def __init__(self, spec: Spec, workdir: Path, precision: str = "auto", compile_: bool | None = None,
                 device: str = "auto"):
        from dtools import train as training

        data = workdir / "data.npy"
        if not data.exists():  # 256 random images, uint8 (N, H, W, C)
            rng = np.random.default_rng(0)
            np.save(data, rng.integers(0, 256, (256, spec.size, spec.size, 3), dtype=np.uint8))
        cfg = train_config(spec, data, workdir / f"run-{precision}-{compile_}", precision=precision,
                           compile=compile_, device=device)
        self.trainer = training.Trainer(cfg, force=True, log=lambda m: None, progress=False)
        self.trainer.setup()
        method = getattr(self.trainer, "method", self.trainer)  # where the DDPM step lives
        self.rt, self.net, self.cfg = self.trainer.rt, method.model, cfg
        self.train_step = method.train_step
        ema = method.ema.module
        if self.rt.compile:
            ema = copy.deepcopy(ema)
            ema.compile()
        model_fn = self.rt.model_fn(ema)  # what the samplers call, in train's grids and `dtools sample`

        def sample_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():  # as samplers.generate calls it
                return model_fn(x, t)

        self.sample_fn = sample_fn
        self.batch = spec.batch

    def loader(self) -> torch.Tensor:
        """One batch of the data path: indices from the stream, gather, flips, to float in [-1, 1]."""
        from dtools.train.data import augment

        t = self.trainer
        if hasattr(t, "real_batch"):
            return t.real_batch()
        idx = t.stream.next(self.batch)
        return augment(t.images[idx], t.cfg.flip).to(t.device).float() / 127.5 - 1.0


# ---------------------------------------------------------------------------------------------
# diffusers: a plain training loop around UNet2DModel


class DiffusersSide:
    def __init__(self, cfg: UNetConfig, batch: int, mode: str, device: torch.device, clip: float | None):
        from bench_unet import diffusers_twin

        torch.manual_seed(0)
        self.cl, self.bf16, self.clip, self.device = "-cl" in mode, "bf16" in mode, clip, device
        net = diffusers_twin(cfg).to(device)
        self.net = net.to(memory_format=CL) if self.cl else net
        fused = device.type in ("cpu", "cuda") or None
        self.opt = torch.optim.Adam(self.net.parameters(), lr=1e-4, fused=fused)
        self.ema = copy.deepcopy(self.net).eval().requires_grad_(False)
        if mode.endswith("-compiled"):  # in place, as dtools compiles (state-dict keys unchanged)
            self.net.compile()
            self.ema.compile()
        self.shape = (batch, cfg.in_channels, cfg.image_size, cfg.image_size)
        self.x0 = torch.rand(self.shape, device=device) * 2 - 1
        self.ab = torch.cumprod(1 - torch.from_numpy(make_schedule("cosine", 1000)), 0).float().to(device)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=CL) if self.cl else x

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def train_step(self) -> float:
        self.net.train()
        t = torch.randint(0, 1000, (self.shape[0],), device=self.device)
        eps = torch.randn(self.shape, device=self.device)
        a = self.ab[t].view(-1, 1, 1, 1)
        x_t = self._layout(a.sqrt() * self.x0 + (1 - a).sqrt() * eps)
        self.opt.zero_grad(set_to_none=True)
        with self._autocast():
            out = self.net(x_t, t).sample
        loss = F.mse_loss(out.float(), eps)
        loss.backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.clip)
        self.opt.step()
        with torch.no_grad():
            e, o = self.ema.state_dict(), self.net.state_dict()
            keys = [k for k, v in e.items() if v.is_floating_point()]
            torch._foreach_lerp_([e[k] for k in keys], [o[k] for k in keys], 0.001)
        return float(loss.detach())

    def sample_fn(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), self._autocast():
            return self.ema(self._layout(x), t).sample.float()


# ---------------------------------------------------------------------------------------------


def build(spec: Spec, mode: str, workdir: Path, device: str = "auto", eager: bool = False):
    """'dtools' (the default path; with `eager` not compiled), 'dtools --compile', or 'diffusers MODE'
    (DIFFUSERS_MODES[-compiled])."""
    if mode.startswith("dtools"):
        compile_ = True if "--compile" in mode else False if eager else None
        return DtoolsSide(spec, workdir, compile_=compile_, device=device)
    cfg = train_config(spec, workdir / "data.npy", workdir / "unused", device=device)
    device = resolve(cfg.device).device
    return DiffusersSide(UNetConfig.from_dict(cfg.model), spec.batch, mode.split()[1], device, cfg.grad_clip)


def memory_child(spec_name: str, mode: str, toy: bool, device: str) -> None:
    spec = TOY if toy else SPECS[spec_name]
    with tempfile.TemporaryDirectory() as d:
        side = build(spec, mode, Path(d), device)
        before = benchlib.vmhwm_mib()
        for _ in range(3):
            side.train_step()
        print(json.dumps({"before": before, "after": benchlib.vmhwm_mib()}))


def peak_memory(spec: Spec, modes: list[str], toy: bool, device: str) -> dict[str, tuple[float, float]]:
    """{mode: (VmHWM MiB after 3 steps, its increase over the built model)}, a fresh process each."""
    out = {}
    for mode in modes:
        cmd = [sys.executable, __file__, "--memory-child", spec.name, mode, "--device", device]
        cmd += ["--toy"] if toy else []
        res = subprocess.run(cmd, capture_output=True, text=True)
        try:
            d = json.loads(res.stdout.strip().splitlines()[-1])
            out[mode] = (d["after"], d["after"] - d["before"])
        except (IndexError, ValueError, KeyError):
            print(f"memory of {mode} failed: {res.stderr[-400:]}", file=sys.stderr)
            out[mode] = (math.nan, math.nan)
    return out


def cuda_peak_memory(sides: dict) -> dict[str, tuple[float, float]]:
    """{mode: (MiB, MiB)}: the CUDA allocator's peak during one training step over what was resident before
    it, twice (the table's two numbers: one in-process measure, all modes' models resident)."""
    out = {}
    for mode, side in sides.items():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        side.train_step()
        torch.cuda.synchronize()
        grown = (torch.cuda.max_memory_allocated() - before) / 2**20
        out[mode] = (grown, grown)
    return out


def bench(spec: Spec, args, gemm: dict[str, float]) -> dict:
    reps = 2 if args.toy else args.reps
    with tempfile.TemporaryDirectory() as d:
        workdir = Path(d)
        dif_modes = args.diffusers_modes.split(",")
        default_compiles = resolve(args.device).compile and not args.eager  # on CUDA the default compiles
        modes = ["dtools"] + (["dtools --compile"] if args.compile and not default_compiles else [])
        modes += [f"diffusers {m}" for m in dif_modes]
        modes += [f"diffusers {dif_modes[-1]}-compiled"] if args.compile else []
        sides = {m: build(spec, m, workdir, args.device, args.eager) for m in modes}
        dt, dif = sides["dtools"], sides[f"diffusers {dif_modes[0]}"]
        device = dt.rt.device
        cuda = device.type == "cuda"
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        shape = (spec.batch, dt.cfg.channels, spec.size, spec.size)
        x, t = torch.randn(shape, device=device), torch.randint(0, 1000, (spec.batch,), device=device)
        flops = {"dtools": benchlib.forward_flops(lambda: dt.net(x, t)),
                 "diffusers": benchlib.forward_flops(lambda: dif.net(x, t))}
        params = {"dtools": count_parameters(dt.net), "diffusers": count_parameters(dif.net)}
        # the toy run keeps every round: it only checks that all of this runs; on a GPU the host's other
        # processes do not slow the device, and its 16 cores are not the 2 this rule was made for
        csw = 0 if args.toy or cuda else 40
        steps = {m: s.train_step for m, s in sides.items()}
        train = benchlib.interleaved(steps, reps, sync=sync, csw_max=csw)
        calls = {m: (lambda s=s: s.sample_fn(x, t)) for m, s in sides.items()}
        sample = benchlib.interleaved(calls, reps, sync=sync, csw_max=csw)
        loader = benchlib.interleaved({"loader": dt.loader}, max(reps, 20), warmup=2, csw_max=0)
        precision = {m: (dt.rt.precision if m.startswith("dtools") else ("bf16" if "bf16" in m else "fp32"))
                     for m in modes}
        memory = cuda_peak_memory(sides) if cuda else None
        del sides
    if memory is None:
        eager = [m for m in modes if "compile" not in m]  # compiling in a fresh process would dominate
        memory = peak_memory(spec, eager if not args.toy else eager[:2], args.toy, args.device)  # toy: fast
    return dict(spec=spec, modes=modes, train=train, sample=sample, loader=loader, flops=flops, params=params,
                precision=precision, memory=memory, gemm=gemm, rt=dt.rt.describe(), cuda=cuda)


def report(r: dict) -> dict:
    spec, modes, gemm = r["spec"], r["modes"], r["gemm"]
    p, f = r["params"], r["flops"]
    print(f"\n## {spec.name}: {spec.size}x{spec.size}, batch {spec.batch}; dtools default: {r['rt']}")
    print(f"parameters: dtools {p['dtools'] / 1e6:.2f} M, diffusers {p['diffusers'] / 1e6:.2f} M "
          f"({100 * (p['dtools'] / p['diffusers'] - 1):+.1f} %); forward GFLOP per image: dtools "
          f"{f['dtools'] / spec.batch / 1e9:.2f}, diffusers {f['diffusers'] / spec.batch / 1e9:.2f}")
    ratios = {}
    for what, timing, per_call, unit in (("training", r["train"], 3, "img/s"),
                                         ("sampling", r["sample"], 1, "image-steps/s")):
        rate = {m: spec.batch / timing.median(m) for m in modes}
        best_dif = max((m for m in modes if m.startswith("diffusers")), key=rate.get)
        rows = []
        for m in modes:
            side = "dtools" if m.startswith("dtools") else "diffusers"
            gflops = per_call * f[side] / timing.median(m) / 1e9
            share = gflops / gemm[r["precision"][m]]
            row = [m + (" (best)" if m == best_dif else ""), f"{rate[m]:.1f}",
                   f"{rate[m] / rate[best_dif]:.2f}", f"{gflops:.0f}", f"{100 * share:.0f} %",
                   f"{timing.first[m]:.1f}"]
            if what == "training":
                after, grown = r["memory"].get(m, (math.nan, math.nan))
                row.append(f"{grown:.0f}" if r["cuda"] else f"{after:.0f} (+{grown:.0f})")
            rows.append(row)
        head = ["mode", unit, "vs diffusers best", "GFLOP/s", "of GEMM rate", "first call s"]
        kept = len(timing.times[modes[0]])
        print(f"\n{what}: medians of {kept} rounds ({timing.dropped} disturbed rounds dropped)")
        mem_head = "step's peak MiB over resident" if r["cuda"] else "peak MiB (step's increase)"
        print(benchlib.table(rows, head + ([mem_head] if what == "training" else [])))
        ratios[what] = {m: rate[m] / rate[best_dif] for m in modes if m.startswith("dtools")}
        ratios[what + " rate"] = rate["dtools"]
        ratios[what + " by mode"] = {m: {unit: rate[m], "first call s": timing.first[m], "best diffusers":
                                         m == best_dif} for m in modes}
        if what == "training":
            measured = [m for m in modes if m.startswith("diffusers") and m in r["memory"]]
            best_eager = max(measured, key=rate.get)  # against diffusers' fastest mode measured for memory
            ratios["memory"] = r["memory"]["dtools"][0] / r["memory"][best_eager][0]
            ratios["memory MiB"] = {m: r["memory"][m][1] for m in measured + ["dtools"]}
    loader_rate = spec.batch / r["loader"].median("loader")
    print(f"\ndata path: the loader delivers {loader_rate:,.0f} img/s, "
          f"{loader_rate / ratios['training rate']:,.0f}x dtools' training rate")
    ratios["loader"] = loader_rate / ratios["training rate"]
    return ratios


def _self_time(e, cuda: bool) -> float:
    """An operator's self time in microseconds: on the GPU (kernels) or on the CPU."""
    if not cuda:
        return e.self_cpu_time_total
    return getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0.0)


def profile(spec: Spec, device: str = "auto", eager: bool = False, steps: int = 5) -> None:
    """Where a default training step's time goes: torch.profiler over `steps` steps after warm-up,
    operators by self time (on a GPU: kernel time, beside the step's wall time, whose difference is
    time the GPU waited), grouped into what they are."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with tempfile.TemporaryDirectory() as d:
        side = DtoolsSide(spec, Path(d), device=device, compile_=False if eager else None)
        cuda = side.rt.device.type == "cuda"
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        for _ in range(3):
            side.train_step()
        sync()
        t0 = time.perf_counter()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with torch_profile(activities=activities) as prof:
            for _ in range(steps):
                side.train_step()
            sync()
        wall = (time.perf_counter() - t0) / steps * 1e3
    events = [e for e in prof.key_averages() if _self_time(e, cuda) > 0]
    total = sum(_self_time(e, cuda) for e in events) / steps / 1e3
    groups = {  # the first group whose key is in an operator's name takes it
        "convolution backward": ("convolution_backward", "convolutionbackward"),
        "convolution forward": ("convolution", "conv2d"), "GroupNorm": ("group_norm", "groupnorm"),
        "attention": ("scaled_dot_product", "flash_attention", "bmm", "matmul", "softmax"),
        "Adam, EMA, grad clip": ("adam", "_foreach", "lerp", "norm", "clip"),
        "layout copies, casts": ("copy_", "_to_copy", "clone", "contiguous")}
    grouped = dict.fromkeys([*groups, "other"], 0.0)
    for e in events:
        name = e.key.lower().removeprefix("aten::")
        group = next((g for g, keys in groups.items() if any(k in name for k in keys)), "other")
        grouped[group] += _self_time(e, cuda) / steps / 1e3
    print(f"\n## profile of dtools' training step ({side.rt.describe()}), {spec.name} "
          f"{spec.size}x{spec.size} batch {spec.batch}: {wall:.0f} ms per step under the profiler, "
          f"{total:.0f} ms of operator self time{' on the GPU' if cuda else ''}")
    ranked = sorted(grouped.items(), key=lambda x: -x[1])
    rows = [[g, f"{ms:.1f}", f"{100 * ms / total:.0f} %"] for g, ms in ranked]
    print(benchlib.table(rows, ["operators", "ms per step", "share"]))
    top = sorted(events, key=lambda e: -_self_time(e, cuda))[:15]
    rows = [[e.key[:80], f"{_self_time(e, cuda) / steps / 1e3:.1f}", str(e.count // steps)] for e in top]
    print(benchlib.table(rows, ["top operators", "ms per step", "calls per step"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="seed64,seed32,cpu32",
                    help=f"comma-separated, of {', '.join(SPECS)}")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--diffusers-modes", default="fp32,bf16,bf16-cl",
                    help=f"comma-separated, of {', '.join(DIFFUSERS_MODES)} (the first: the FLOP count)")
    ap.add_argument("--compile", action="store_true",
                    help="also dtools --compile and the last diffusers mode compiled (first call: compiling)")
    ap.add_argument("--toy", action="store_true", help="a tiny network, 2 rounds: checks that it runs")
    ap.add_argument("--profile", action="store_true", help="only profile dtools' default training step")
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    ap.add_argument("--eager", action="store_true",
                    help="dtools without torch.compile (on CUDA it compiles by default: minutes at first)")
    ap.add_argument("--json", metavar="FILE", help="also write the summary's ratios and rates as JSON")
    ap.add_argument("--memory-child", nargs=2, metavar=("CONFIG", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        return memory_child(*args.memory_child, args.toy, args.device)
    if args.profile:
        for spec in [TOY] if args.toy else [SPECS[n] for n in args.configs.split(",")]:
            profile(spec, args.device, args.eager)
        return
    device = resolve(args.device).device
    n = 256 if args.toy else 8192 if device.type == "cuda" else 2048  # a size that fills the device
    if device.type == "cuda":  # fp32 means fp32 here; the GEMM rate of fp32 is that of true fp32
        torch.backends.cuda.matmul.allow_tf32 = False
    gemm = {"fp32": benchlib.gemm_rate(torch.float32, device, n),
            "bf16": benchlib.gemm_rate(torch.bfloat16, device, n)}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads on {device}; GEMM rate this run: "
          f"fp32 {gemm['fp32']:.0f} GFLOP/s, bf16 {gemm['bf16']:.0f} GFLOP/s")
    specs = [TOY] if args.toy else [SPECS[n] for n in args.configs.split(",")]
    summary, results = [], {}
    for spec in specs:
        t0 = time.perf_counter()
        ratios = report(bench(spec, args, gemm))
        results[spec.name] = ratios
        if args.json:  # after each configuration, so a run cut short keeps what it measured
            Path(args.json).write_text(json.dumps({"device": str(device), "torch": torch.__version__,
                                                   "gemm_gflops": gemm, "configs": results}, indent=1))
        tr, sa = ratios["training"], ratios["sampling"]
        summary.append([spec.name, f"{tr['dtools']:.2f}", f"{tr.get('dtools --compile', math.nan):.2f}",
                        f"{sa['dtools']:.2f}", f"{sa.get('dtools --compile', math.nan):.2f}",
                        f"{ratios['memory']:.2f}", f"{ratios['loader']:.0f}x",
                        f"{time.perf_counter() - t0:.0f} s"])
    print("\n## summary: dtools / diffusers' best mode (above 1: dtools is faster; memory: below 1 is less)")
    print(benchlib.table(summary, ["config", "train default", "train --compile", "sample default",
                                   "sample --compile", "peak memory", "loader / train", "bench time"]))


if __name__ == "__main__":
    main()
