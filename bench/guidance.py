"""Guidance measured by FID on held-out images: the numbers behind docs/guidance.md.

    python bench/guidance.py auto --minutes 15 --samples 1000 --fractions 0.125,0.25,0.5 --weights 0.5,1,2
    python bench/guidance.py classes --minutes 15 --samples 1000 --weights 0,1,2,4
    python bench/guidance.py auto --minutes 15 --row "unguided=" --row "ddim eta 1=--sampler ddim --eta 1" \
        --row "guided, eta 1=--guide GUIDE@0.125 --guidance 1 --sampler ddim --eta 1"

auto (autoguidance, Karras et al. 2024): the default recipe trains on the twemoji split of
bench/quality.py (every 4th image held out) for --minutes, while its checkpoint is copied at every save
(--save-every 100), so that the EMA weights of earlier moments of the same run can guide the last ones.
Each guide (the snapshot nearest each fraction of the run's steps) and each weight w samples --samples
images with `dtools sample`'s default sampler (20 steps) and `--guide SNAPSHOT --guidance W`; the table
gives FID and KID against the held-out images, with the unguided model at 20 steps and at the network
calls of a guided run (40 steps) beside them. With --row NAME=OPTIONS (repeatable) it samples those rows
instead: OPTIONS are `dtools sample` options, in which GUIDE@F names the snapshot nearest fraction F of
the run (and GUIDE@run the run's own RUN/guide.safetensors).

classes (classifier-free guidance): the built-in labelled digits (`dtools prep mnist`, 32x32 grey), every
4th held out, train a class-conditional model with the defaults for --minutes; it samples --samples
images (every class in turn) at each w, with and without the guidance interval, and `dtools fid` scores
FID and the conditioning accuracy against the held-out digits.

Benchmarks, not tests: run alone on a quiet machine (the exclusive lock of docs/performance.md). Both
write OUT/guidance-*.json and print a table.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import HELD_OUT_EVERY, sh, split  # noqa: E402
from recipes import _step, held_stats  # noqa: E402

INTERVAL = "0.28,5.42"  # Kynkäänniemi et al. 2024's interval for EDM2-S (σ)


def fid_json(reference: Path, samples: Path, log: Path) -> dict:
    out = sh("dtools", "fid", str(reference), str(samples), "--kid", "--json", log=log)
    return json.loads(next(x for x in reversed(out.splitlines()) if x.startswith("{")))


def sample_and_score(model: Path, reference: Path, n: int, samples: Path, log: Path, *options: str) -> dict:
    shutil.rmtree(samples, ignore_errors=True)
    start = log.stat().st_size if log.exists() else 0
    t0 = time.perf_counter()
    sh("dtools", "sample", str(model), "-n", str(n), "-o", str(samples), *options, log=log)
    sample_s = round(time.perf_counter() - t0, 1)
    with open(log, encoding="utf-8", errors="replace") as f:  # the sample's log line names its calls
        f.seek(start)
        found = re.search(r"\((\d+) network calls/image", f.read())
    calls = int(found.group(1)) if found else None
    scores = fid_json(reference, samples, log)
    row = {"fid": scores["fid"], "kid": scores.get("kid_mean"), "sample_s": sample_s, "calls": calls}
    if "conditioning_accuracy" in scores:
        row["accuracy"] = scores["conditioning_accuracy"]
        row["classifier_ceiling"] = scores["classes"]["classifier"]["heldout_accuracy"]
        row["per_class_fid"] = {p["class"]: p["fid"] for p in scores["classes"]["per_class"]}
    return row


class Snapshots(threading.Thread):
    """Copies RUN/model.safetensors to OUT/step_N.safetensors each time a new checkpoint lands (the file
    is replaced atomically, so every copy is whole)."""

    def __init__(self, run: Path, out: Path):
        super().__init__(daemon=True)
        self.folder, self.out, self.done = run, out, threading.Event()
        out.mkdir(parents=True, exist_ok=True)

    def run_once(self) -> None:
        model = self.folder / "model.safetensors"
        try:
            step = _step(self.folder)
        except (OSError, ValueError, KeyError):
            return
        target = self.out / f"step_{step:06d}.safetensors"
        if not target.exists():
            shutil.copyfile(model, target)

    def run(self) -> None:  # noqa: D102 (threading's)
        while not self.done.wait(1.0):
            self.run_once()


def snapshots(folder: Path) -> dict[int, Path]:
    return {int(p.stem.split("_")[1]): p for p in sorted(folder.glob("step_*.safetensors"))}


def auto(args: argparse.Namespace) -> list[dict]:
    out, log = args.out, args.out / "log.txt"
    data, held = split(out, 32, None)
    stats = held_stats(held, out, log)
    run, snaps = out / "run", out / "snapshots"
    if not (run / "model.safetensors").exists():
        shutil.rmtree(snaps, ignore_errors=True)
        watcher = Snapshots(run, snaps)
        watcher.start()
        sh("dtools", "train", str(data), "-o", str(run), "--max-minutes", str(args.minutes), "--save-every",
           "100", "--seed", str(args.seed), log=log)
        watcher.done.set()
        watcher.join()
    model = run / "model.safetensors"
    last = _step(run)
    taken = snapshots(snaps)
    rows = []

    def add(name: str, *options: str, guide_step: int | None = None) -> None:
        rows.append({"variant": name, "guide_step": guide_step, "steps": last,
                     **sample_and_score(model, stats, args.samples, out / "samples", log, *options)})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    if args.row:
        for name, options in args.row:
            words = [guide_path(w, taken, last, run) for w in options.split()]
            add(name, *words)
        return rows
    add("unguided, 20 steps")
    add("unguided, 40 steps", "--steps", "40")
    for fraction in args.fractions:
        step = min(taken, key=lambda s: abs(s - fraction * last))
        for w in args.weights:
            add(f"guide at {fraction:g} of the run (step {step}), w={w:g}", "--guide", str(taken[step]),
                "--guidance", str(w), guide_step=step)
    return rows


def guide_path(word: str, taken: dict[int, Path], last: int, run: Path) -> str:
    """GUIDE@F: the snapshot nearest fraction F of the run's `last` steps; GUIDE@run: the run's own guide."""
    if not word.startswith("GUIDE@"):
        return word
    at = word.removeprefix("GUIDE@")
    if at == "run":
        return str(run / "guide.safetensors")
    step = min(taken, key=lambda s: abs(s - float(at) * last))
    return str(taken[step])


def named_row(text: str) -> tuple[str, str]:
    name, sep, options = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--row NAME=OPTIONS, got {text!r}")
    return name.strip(), options


def digits(out: Path, log: Path) -> tuple[Path, Path]:
    """OUT/digits-train and OUT/digits-heldout: mnist at 32x32 grey, every 4th image held out, labels kept."""
    from dtools.labels import read_labels, write_labels

    train, held = out / "digits-train", out / "digits-heldout"
    if train.is_dir() and held.is_dir():
        return train, held
    allimg = out / "digits-all"
    if not allimg.is_dir():
        sh("dtools", "prep", "mnist", str(allimg), "--size", "32", "--channels", "1", log=log)
    labels = read_labels(allimg)
    assert labels is not None, "dtools prep mnist wrote no dataset.json"
    parts: dict[Path, tuple[list[str], list[int]]] = {train: ([], []), held: ([], [])}
    for folder in parts:
        folder.mkdir(parents=True, exist_ok=True)
    seen: dict[int, int] = {}  # every 4th image *of each class* is held out: prep mnist interleaves
    for f in sorted(allimg.glob("*.png")):  # the classes, so every 4th image overall is odd digits only
        c = labels.of[f.name]
        seen[c] = seen.get(c, -1) + 1
        folder = held if seen[c] % HELD_OUT_EVERY == HELD_OUT_EVERY - 1 else train
        names, classes = parts[folder]
        name = f"{len(names):06d}.png"
        shutil.copyfile(f, folder / name)
        names.append(name)
        classes.append(labels.of[f.name])
    for folder, (names, classes) in parts.items():
        write_labels(folder, names, classes, labels.classes)
    return train, held


def classes(args: argparse.Namespace) -> list[dict]:
    out, log = args.out, args.out / "log.txt"
    train, held = digits(out, log)
    run = out / "digits-run"
    if not (run / "model.safetensors").exists():
        sh("dtools", "train", str(train), "-o", str(run), "--max-minutes", str(args.minutes), "--seed",
           str(args.seed), log=log)
    model, last = run / "model.safetensors", _step(run)
    rows = []
    for name, options in args.row:  # e.g. autoguidance by the run's own guide: --guide GUIDE@run
        words = [guide_path(w, {}, last, run) for w in options.split()]
        rows.append({"variant": name, "steps": last,
                     **sample_and_score(model, held, args.samples, out / "samples", log, *words)})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    if args.row:
        return rows
    for w in args.weights:
        for interval in ([None] if w == 0 else [None, INTERVAL]):
            options = ["--guidance", str(w)] + (["--guidance-interval", interval] if interval else [])
            name = f"w={w:g}" + (f", interval {interval}" if interval else "")
            rows.append({"variant": name, "steps": last,
                         **sample_and_score(model, held, args.samples, out / "samples", log, *options)})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict]) -> str:
    keys = [k for k in ("fid", "kid", "accuracy", "calls", "sample_s") if any(k in r for r in rows)]
    lines = ["| variant | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for r in rows:
        cells = [f"{r[k]:.4g}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in keys]
        lines.append(f"| {r['variant']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("auto", "classes"))
    p.add_argument("--minutes", type=float, default=15.0)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fractions", type=floats, default=[0.125, 0.25, 0.5])
    p.add_argument("--weights", type=floats, default=None)
    p.add_argument("--out", type=Path, default=Path("bench-out/guidance"))
    p.add_argument("--row", type=named_row, action="append", default=[],
                   help="auto: sample only these rows, NAME=OPTIONS (GUIDE@F: the snapshot at fraction F)")
    args = p.parse_args(argv)
    if args.weights is None:
        args.weights = [0.5, 1.0, 2.0] if args.what == "auto" else [0.0, 1.0, 2.0, 4.0]
    args.out.mkdir(parents=True, exist_ok=True)
    rows = auto(args) if args.what == "auto" else classes(args)
    (args.out / f"guidance-{args.what}.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
