#!/usr/bin/env bash
# Remake the model the demo ships (demo/pretrained/emoji32) from nothing but dtools commands.
#
#   bash demo/pretrained/make.sh [WORK]      (WORK defaults to pretrained-work; about 40 minutes on
#                                            2 CPU cores with bf16, minutes on a GPU)
#
# The run is sized in steps, not minutes, so that every machine trains the same run (the seed fixes
# the data order and the noise; kernels still differ in their last bits between CPUs and GPUs).
set -euo pipefail
WORK=${1:-pretrained-work}
STEPS=${PRETRAINED_STEPS:-20000}
command -v dtools >/dev/null || { echo "Error: dtools is not on PATH (make install, then activate .venv)" >&2; exit 1; }
mkdir -p "$WORK"
cd "$WORK"
dtools prep twemoji data --size 32
dtools train data -o emoji32-run --max-steps "$STEPS" --seed 0
dtools pack emoji32-run -o emoji32
echo "made $WORK/emoji32; compare it with demo/pretrained/emoji32: dtools info $WORK/emoji32" >&2
