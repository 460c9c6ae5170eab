"""Sample quality per CPU-minute: dtools' defaults against the diffusers recipe a user would pick instead.

    python bench/quality.py                          # 5, 15 and 30 minutes each (about 2.5 hours on 2 cores)
    python bench/quality.py --minutes 15 --no-reference
    python bench/quality.py --minutes 5,15,30 --reference-minutes 15   # the reference at 15 min only
    python bench/quality.py --minutes 5 --source mnist --channels 1 --out bench/out/quality-mnist
    make bench-quality                               # the same, with the bench extra installed

The data are the built-in twemoji at 32x32 (`dtools prep twemoji`), split once by index: every 4th image
(1,002) is held out and never trained on; the other 3,007 are the training set. --source takes any other
set `dtools prep` reads (mnist: 5,000 handwritten digits; or a folder of images), and holds out a seeded
random quarter of it (1,250 of MNIST's 5,000). For each budget M:

- dtools: `dtools train TRAIN -o RUN --max-minutes M` with no other option (the defaults are what is
  measured), `dtools sample RUN -n N` (the default sampler, autoguided by the run's own guide), `dtools
  fid HELDOUT.stats SAMPLES --kid`; with --before also `dtools sample RUN -n N --guidance 0`, the same
  model sampled as before autoguidance was the default; with --posthoc the run also keeps 16 post-hoc EMA
  snapshots (`--posthoc-ema 16`), `dtools ema RUN --choose` picks the EMA length by FID against the
  TRAINING images (500 samples per length; the held-out images stay unseen), and the chosen EMA is
  sampled and scored like the default (the row "dtools post-hoc EMA").
- the reference, when diffusers is installed: diffusers' `UNet2DModel` with block_out_channels (32, 64, 128),
  two layers per block and attention at 8x8 (3.94 M parameters), `DDPMScheduler` with the cosine schedule
  (squaredcos_cap_v2) and ε-prediction, trained with the recipe of diffusers' `train_unconditional.py`
  example (AdamW betas (0.95, 0.999), weight decay 1e-6, EMA with inv_gamma 1 and power 3/4, random flips)
  with its learning rate raised to 5e-4, 100 warm-up steps then a cosine decay that ends with the budget,
  bf16 autocast, batch 32; sampled with DDIM, 50 steps, η = 0; scored by the same `dtools fid`.

Both trainings count only their training loop against the budget. The run prints a table (FID, KID, steps
and images seen per side, the ratio of the FIDs) and writes OUT/quality.json and OUT/quality.png (FID
against minutes). It is a benchmark, not a test: nothing asserts on the numbers. Run it on a quiet machine;
every figure depends on the CPU time the trainings get.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

HELD_OUT_EVERY = 4  # image i is held out when i % 4 == 3
REFERENCE = {
    "block_out_channels": (32, 64, 128),
    "layers_per_block": 2,
    "down_block_types": ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
    "up_block_types": ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    "lr": 5e-4, "warmup_steps": 100, "batch": 32, "ddim_steps": 50,
}


def sh(*args: str, log: Path | None = None) -> str:
    """Run a command; its stdout is returned, its stderr goes to `log` (or through)."""
    err = open(log, "a") if log is not None else None  # noqa: SIM115
    try:
        res = subprocess.run(args, stdout=subprocess.PIPE, stderr=err, text=True, check=False)
    finally:
        if err is not None:
            err.close()
    if res.returncode != 0:
        where = f"; see {log}" if log is not None else ""
        raise SystemExit(f"quality: `{' '.join(args)}` failed with exit code {res.returncode}{where}")
    return res.stdout


def split(out: Path, size: int, images: int | None, source: str = "twemoji",
          channels: int = 3) -> tuple[Path, Path]:
    """OUT/train and OUT/heldout: the prepared images of `source` (what `dtools prep` reads: 'twemoji',
    'mnist' or a folder), a quarter held out (made once, then reused)."""
    train, held = out / "train", out / "heldout"
    if train.is_dir() and held.is_dir():
        return train, held
    allimg = out / "all"
    if not allimg.is_dir():
        limit = ["--limit", str(images)] if images else []
        sh("dtools", "prep", source, str(allimg), "--size", str(size), "--channels", str(channels), *limit,
           log=out / "log.txt")
    files = sorted(allimg.glob("*.png"))
    if source == "twemoji":  # every 4th by name: the split of every figure recorded so far
        held_out = {i for i in range(len(files)) if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1}
    else:  # a seeded random quarter: prep writes a labelled set's classes in turn, so that every 4th
        # image of MNIST is an odd digit (10 classes, period 4); a random quarter has no period to hit
        held_out = set(random.Random(0).sample(range(len(files)), len(files) // HELD_OUT_EVERY))
    for folder in (train, held):
        folder.mkdir(parents=True, exist_ok=True)
    n_train = n_held = 0
    for i, f in enumerate(files):
        if i in held_out:
            shutil.copyfile(f, held / f"{n_held:06d}.png")
            n_held += 1
        else:
            shutil.copyfile(f, train / f"{n_train:06d}.png")
            n_train += 1
    return train, held


def fid(stats: Path, samples: Path, log: Path) -> dict:
    out = sh("dtools", "fid", str(stats), str(samples), "--kid", "--json", log=log)
    line = next(x for x in reversed(out.splitlines()) if x.startswith("{"))
    return json.loads(line)


# `--before`: the same model sampled as dtools sampled before autoguidance became the default
BEFORE = ("dtools unguided", ("--guidance", "0"))
POSTHOC = "dtools post-hoc EMA"  # `--posthoc`: the run's EMA length chosen after training
POSTHOC_SNAPSHOTS, POSTHOC_SAMPLES = 16, 500


def run_dtools(
    train: Path, stats: Path, minutes: float, n: int, out: Path, before: bool = False, posthoc: bool = False
) -> list[dict]:
    run = out / f"dtools-{minutes:g}min"
    log = out / "log.txt"
    shutil.rmtree(run, ignore_errors=True)
    t0 = time.perf_counter()
    keep = ("--posthoc-ema", str(POSTHOC_SNAPSHOTS)) if posthoc else ()
    sh("dtools", "train", str(train), "-o", str(run), "--max-minutes", str(minutes), *keep, log=log)
    train_s = time.perf_counter() - t0
    checkpoints = [("dtools", run / "model.safetensors", ())] + (
        [(BEFORE[0], run / "model.safetensors", BEFORE[1])] if before else [])
    if posthoc:
        train_stats = out / "train.safetensors"  # what the choice may look at: the training images
        if not train_stats.exists():
            sh("dtools", "fid", str(train), "--save-stats", str(train_stats), "--kid", log=log)
        chosen = run / "ema-best.safetensors"
        report = sh("dtools", "ema", str(run), "--choose", "--reference", str(train_stats), "-n",
                    str(POSTHOC_SAMPLES), "-o", str(chosen), "--plot", str(out / f"ema-{minutes:g}min.png"),
                    "--json", log=log)
        (out / f"ema-{minutes:g}min.json").write_text(report)
        checkpoints.append((POSTHOC, chosen, ()))
    with open(run / "model.safetensors", "rb") as f:  # the step, from the checkpoint's JSON header
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    info = json.loads(header["__metadata__"]["dtools"])
    steps = int(info["step"])
    batch = int(info.get("train", {}).get("batch_size", 0))
    rows = []
    for side, checkpoint, options in checkpoints:
        samples = out / f"samples-{side.replace(' ', '-')}-{minutes:g}min"
        shutil.rmtree(samples, ignore_errors=True)
        t0 = time.perf_counter()
        sh("dtools", "sample", str(checkpoint), "-n", str(n), "-o", str(samples), *options, log=log)
        sample_s = time.perf_counter() - t0
        scores = fid(stats, samples, log)
        rows.append({"side": side, "minutes": minutes, "steps": steps, "images_seen": steps * batch,
                     "train_s": round(train_s, 1), "sample_s": round(sample_s, 1), "fid": scores["fid"],
                     "kid": scores.get("kid_mean"), "kid_std": scores.get("kid_std"), "samples": n})
    return rows


def run_reference(train: Path, stats: Path, minutes: float, n: int, out: Path) -> dict:
    samples, log = out / f"samples-diffusers-{minutes:g}min", out / "log.txt"
    shutil.rmtree(samples, ignore_errors=True)
    res = sh(sys.executable, __file__, "reference", str(train), str(samples), "--minutes", str(minutes),
             "-n", str(n), log=log)
    info = json.loads(res.strip().splitlines()[-1])
    scores = fid(stats, samples, log)
    return {"side": "diffusers", "minutes": minutes, **info, "fid": scores["fid"],
            "kid": scores.get("kid_mean"), "kid_std": scores.get("kid_std"), "samples": n}


def reference(data: Path, samples: Path, minutes: float, n: int, seed: int = 0) -> dict:
    """Train and sample the diffusers reference (run in its own process: `quality.py reference ...`)."""
    import numpy as np
    import torch
    from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
    from diffusers.training_utils import EMAModel
    from PIL import Image

    torch.manual_seed(seed)
    files = sorted(data.glob("*.png"))
    images = torch.from_numpy(np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]))
    images = images.permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W) uint8
    size = images.shape[-1]
    r = REFERENCE
    model = UNet2DModel(sample_size=size, in_channels=3, out_channels=3,
                        block_out_channels=r["block_out_channels"], layers_per_block=r["layers_per_block"],
                        down_block_types=r["down_block_types"], up_block_types=r["up_block_types"])
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    opt = torch.optim.AdamW(model.parameters(), lr=r["lr"], betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    ema = EMAModel(model.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=3 / 4)
    budget, step, perm, pos = minutes * 60.0, 0, torch.randperm(len(images)), 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < budget:
        warm = min(1.0, (step + 1) / r["warmup_steps"])
        for g in opt.param_groups:  # warm-up, then a cosine decay that ends with the budget
            g["lr"] = r["lr"] * warm * 0.5 * (1 + math.cos(math.pi * min(1.0, elapsed / budget)))
        if pos + r["batch"] > len(images):
            perm, pos = torch.randperm(len(images)), 0
        x0 = images[perm[pos:pos + r["batch"]]].float() / 127.5 - 1
        pos += r["batch"]
        flip = torch.rand(len(x0)) < 0.5
        x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (len(x0),))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            pred = model(scheduler.add_noise(x0, noise, t), t).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.step(model.parameters())
        step += 1
    train_s = time.perf_counter() - start
    ema.copy_to(model.parameters())
    model.eval()
    ddim = DDIMScheduler.from_config(scheduler.config)
    ddim.set_timesteps(r["ddim_steps"])
    samples.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    done = 0
    with torch.no_grad():
        while done < n:
            b = min(100, n - done)
            gen = torch.Generator().manual_seed(seed + done)
            x = torch.randn((b, 3, size, size), generator=gen)
            for t in ddim.timesteps:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    eps = model(x, t).sample
                x = ddim.step(eps.float(), t, x, eta=0.0).prev_sample
            out = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
            for i, im in enumerate(out):
                Image.fromarray(im).save(samples / f"{done + i:06d}.png")
            done += b
    sample_s = time.perf_counter() - t0
    return {"steps": step, "images_seen": step * r["batch"], "train_s": round(train_s, 1),
            "sample_s": round(sample_s, 1), "parameters": sum(p.numel() for p in model.parameters())}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for side, style in (("dtools", "o-"), (BEFORE[0], "o:"), (POSTHOC, "^-"), ("diffusers", "s--")):
        pts = sorted((r["minutes"], r["fid"]) for r in rows if r["side"] == side)
        if pts:
            ax.plot(*zip(*pts, strict=True), style, label=side)
    ax.set(xlabel="training minutes (2-core CPU)", ylabel="FID vs held-out twemoji (lower is better)",
           title="sample quality per CPU-minute")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path)


def table(rows: list[dict]) -> str:
    lines = ["| minutes | side | steps | images seen | FID | KID | sampling s |",
             "|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["minutes"], r["side"])):
        kid = f"{r['kid']:.4f} ± {r['kid_std']:.4f}" if r.get("kid") is not None else "-"
        lines.append(f"| {r['minutes']:g} | {r['side']} | {r['steps']} | {r['images_seen']} | "
                     f"{r['fid']:.1f} | {kid} | {r['sample_s']:.0f} |")
    by = {(r["minutes"], r["side"]): r["fid"] for r in rows}
    for m in sorted({r["minutes"] for r in rows}):
        if (m, "dtools") in by and (m, "diffusers") in by:
            ratio = by[(m, "dtools")] / by[(m, "diffusers")]
            lines.append(f"\n{m:g} min: dtools FID / reference FID = {ratio:.2f}")
        if (m, "dtools") in by and (m, BEFORE[0]) in by:
            ratio = by[(m, "dtools")] / by[(m, BEFORE[0])]
            lines.append(f"\n{m:g} min: dtools FID / the same model unguided = {ratio:.2f}")
        if (m, POSTHOC) in by and (m, BEFORE[0]) in by:
            ratio = by[(m, POSTHOC)] / by[(m, BEFORE[0])]
            lines.append(f"\n{m:g} min: post-hoc EMA FID / the same run's default EMA unguided = {ratio:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd")
    ref = sub.add_parser("reference", help="(internal) train and sample the diffusers reference")
    ref.add_argument("data", type=Path)
    ref.add_argument("samples", type=Path)
    ref.add_argument("--minutes", type=float, required=True)
    ref.add_argument("-n", type=int, required=True)
    p.add_argument("--minutes", default="5,15,30", help="comma-separated training budgets")
    p.add_argument("--samples", type=int, default=1000,
                   help="samples per run scored against the held-out set")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--images", type=int, default=None, help="use only the first N images (a quick check)")
    p.add_argument("--source", default="twemoji",
                   help="the images, as `dtools prep` reads them: twemoji (default), mnist, or a folder; "
                   "give each source its own --out")
    p.add_argument("--channels", type=int, choices=(1, 3), default=3, help="prepare RGB (3) or grey (1)")
    p.add_argument("--out", type=Path, default=Path("bench/out/quality"))
    p.add_argument("--reference-minutes", default=None,
                   help="budgets at which to train the reference too (default: all of --minutes)")
    p.add_argument("--no-reference", action="store_true", help="skip the diffusers reference")
    p.add_argument("--before", action="store_true",
                   help="also sample each dtools model unguided (--guidance 0: the sampling default before "
                   "autoguidance)")
    p.add_argument("--posthoc", action="store_true",
                   help="also keep post-hoc EMA snapshots and score the EMA length `dtools ema --choose` "
                   "picks")
    args = p.parse_args(argv)
    if args.cmd == "reference":
        print(json.dumps(reference(args.data, args.samples, args.minutes, args.n)))
        return
    if shutil.which("dtools") is None:
        raise SystemExit("quality: `dtools` is not on PATH (activate .venv, or run `make bench-quality`)")
    with_ref = not args.no_reference
    if with_ref:
        try:
            import diffusers  # noqa: F401
        except ImportError:
            print("quality: diffusers is not installed; measuring dtools alone", file=sys.stderr)
            with_ref = False
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    train, held = split(out, args.size, args.images, args.source, args.channels)
    stats = out / "heldout.safetensors"
    if not stats.exists():
        sh("dtools", "fid", str(held), "--save-stats", str(stats), "--kid", log=out / "log.txt")
    rows: list[dict] = []
    budgets = [float(x) for x in args.minutes.split(",")]
    ref_budgets = budgets if args.reference_minutes is None else [
        float(x) for x in args.reference_minutes.split(",")]
    for m in sorted(set(budgets) | set(ref_budgets)):
        if m in budgets:
            for row in run_dtools(train, stats, m, args.samples, out, args.before, args.posthoc):
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
        if with_ref and m in ref_budgets:
            rows.append(run_reference(train, stats, m, args.samples, out))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    (out / "quality.json").write_text(json.dumps({"source": args.source,
                                                  "train_images": len(list(train.glob("*.png"))),
                                                  "heldout_images": len(list(held.glob("*.png"))),
                                                  "rows": rows}, indent=2) + "\n")
    plot(rows, out / "quality.png")
    print(table(rows))
    print(f"\nwrote {out / 'quality.json'} and {out / 'quality.png'}", file=sys.stderr)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
