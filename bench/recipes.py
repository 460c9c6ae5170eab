"""Training recipes compared by FID on held-out images: the measurements behind dtools' defaults.

    python bench/recipes.py ablate --minutes 5 --seeds 0,1 \\
        --variant "today=--min-snr-floor 0" --variant "floor 0.1=--min-snr-floor 0.1"
    python bench/recipes.py finetune --base-minutes 8 --steps 600 --seeds 0,1 \\
        --variant "lr 1e-3=--lr 1e-3" --variant "lr 2e-4=--lr 2e-4"

ablate: the built-in twemoji at 32x32, split by index as bench/quality.py splits them (every 4th image
held out). Each variant (a name and the `dtools train` options it adds to the defaults) trains once per
seed for the same CPU minutes (`--max-minutes M --seed S`), samples with `dtools sample`'s defaults and
is scored with `dtools fid --kid` against the held-out images.

finetune: a model trained on one part of the data, fine-tuned on another. The twemoji sorted by file
name are split in two halves (A: the first, B: the second: other kinds of emoji); B is split again
(every 4th held out). The base model trains on A with the defaults for `--base-minutes`. Each variant
fine-tunes it on B for `--steps` steps
(`dtools train B -o RUN --init-from BASE --max-steps S --seed S` plus its options); the table gives
FID/KID on B's held-out images before (the base model) and after.

Both print a table with each variant's mean and spread over the seeds and write OUT/recipes-*.json.
They are benchmarks, not tests: nothing asserts on the numbers. Run them on a quiet machine (the
exclusive lock of docs/performance.md): every figure depends on the CPU time the trainings get.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import HELD_OUT_EVERY, fid, sh, split  # noqa: E402


def parse_variants(texts: list[str]) -> list[tuple[str, list[str]]]:
    """NAME=OPTIONS -> (NAME, [options...])."""
    out = []
    for text in texts:
        name, _, options = text.partition("=")
        if not name:
            raise SystemExit(f"recipes: --variant expects NAME=OPTIONS, got {text!r}")
        out.append((name.strip(), shlex.split(options)))
    return out


def _step(run: Path) -> int:
    with open(run / "model.safetensors", "rb") as f:  # the step, from the checkpoint's JSON header
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    return int(json.loads(header["__metadata__"]["dtools"])["step"])


def score(model: Path, stats: Path, n: int, samples: Path, log: Path) -> dict:
    shutil.rmtree(samples, ignore_errors=True)
    t0 = time.perf_counter()
    sh("dtools", "sample", str(model), "-n", str(n), "-o", str(samples), log=log)
    sample_s = time.perf_counter() - t0
    scores = fid(stats, samples, log)
    return {"fid": scores["fid"], "kid": scores.get("kid_mean"), "sample_s": round(sample_s, 1)}


def train(args: list[str], run: Path, log: Path) -> float:
    shutil.rmtree(run, ignore_errors=True)
    t0 = time.perf_counter()
    sh("dtools", "train", *args, "-o", str(run), log=log)
    return round(time.perf_counter() - t0, 1)


def held_stats(held: Path, out: Path, log: Path) -> Path:
    stats = out / f"{held.name}.safetensors"
    if not stats.exists():
        sh("dtools", "fid", str(held), "--save-stats", str(stats), "--kid", log=log)
    return stats


def ablate(args: argparse.Namespace) -> list[dict]:
    out, log = args.out, args.out / "log.txt"
    data, held = split(out, 32, None)
    stats = held_stats(held, out, log)
    rows = []
    for name, options in parse_variants(args.variant):
        for seed in args.seeds:
            run = out / f"run-{len(rows)}"
            train_s = train([str(data), "--max-minutes", str(args.minutes), "--seed", str(seed), *options],
                            run, log)
            rows.append({"variant": name, "options": options, "seed": seed, "steps": _step(run),
                         "train_s": train_s, **score(run / "model.safetensors", stats, args.samples,
                                                     out / "samples", log)})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def halves(out: Path) -> tuple[Path, Path, Path]:
    """OUT/A, OUT/B-train, OUT/B-heldout: the prepared twemoji halves by file name (made once)."""
    a, b_train, b_held = out / "A", out / "B-train", out / "B-heldout"
    if a.is_dir() and b_train.is_dir() and b_held.is_dir():
        return a, b_train, b_held
    allimg = out / "all"
    if not allimg.is_dir():
        sh("dtools", "prep", "twemoji", str(allimg), "--size", "32", log=out / "log.txt")
    files = sorted(allimg.glob("*.png"))
    half = len(files) // 2
    for folder in (a, b_train, b_held):
        folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(files[:half]):
        shutil.copyfile(f, a / f"{i:06d}.png")
    for i, f in enumerate(files[half:]):
        dest = b_held if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1 else b_train
        shutil.copyfile(f, dest / f"{i:06d}.png")
    return a, b_train, b_held


def finetune(args: argparse.Namespace) -> list[dict]:
    out, log = args.out, args.out / "log.txt"
    a, b_train, b_held = halves(out)
    stats = held_stats(b_held, out, log)
    base = out / "base"
    imported = base / "model.safetensors"
    if not imported.exists():
        train([str(a), "--max-minutes", str(args.base_minutes)], base, log)
    rows = [{"variant": "before (the base model)", "options": [], "seed": None, "steps": 0,
             "train_s": 0.0, **score(imported, stats, args.samples, out / "samples", log)}]
    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    for name, options in parse_variants(args.variant):
        for seed in args.seeds:
            run = out / f"run-{len(rows)}"
            train_s = train([str(b_train), "--init-from", str(imported), "--max-steps", str(args.steps),
                             "--seed", str(seed), *options], run, log)
            rows.append({"variant": name, "options": options, "seed": seed, "steps": _step(run),
                         "train_s": train_s, **score(run / "model.safetensors", stats, args.samples,
                                                     out / "samples", log)})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict]) -> str:
    names = list(dict.fromkeys(r["variant"] for r in rows))
    lines = ["| variant | seeds | steps | FID each | FID mean | KID mean |", "|---|---|---|---|---|---|"]
    for name in names:
        rs = [r for r in rows if r["variant"] == name]
        fids = [r["fid"] for r in rs]
        kids = [r["kid"] for r in rs if r["kid"] is not None]
        steps = ", ".join(f"{r['steps']:,}" for r in rs)
        kid = f"{statistics.mean(kids):.3f}" if kids else "-"
        lines.append(f"| {name} | {len(rs)} | {steps} | {', '.join(f'{f:.1f}' for f in fids)} | "
                     f"{statistics.mean(fids):.1f} | {kid} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("ablate", "finetune"):
        q = sub.add_parser(name)
        q.add_argument("--variant", action="append", required=True, help="NAME=OPTIONS (repeatable)")
        q.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1])
        q.add_argument("--samples", type=int, default=500, help="samples per run scored against held-out")
        q.add_argument("--out", type=Path, default=Path(f"bench/out/recipes-{name}"))
        if name == "ablate":
            q.add_argument("--minutes", type=float, default=5.0, help="training minutes per run")
        else:
            q.add_argument("--base-minutes", type=float, default=8.0, help="the base model's minutes on A")
            q.add_argument("--steps", type=int, default=600, help="fine-tuning steps on B")
    args = p.parse_args(argv)
    if shutil.which("dtools") is None:
        raise SystemExit("recipes: `dtools` is not on PATH (activate .venv)")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = ablate(args) if args.cmd == "ablate" else finetune(args)
    (args.out / f"recipes-{args.cmd}.json").write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    print(table(rows))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
