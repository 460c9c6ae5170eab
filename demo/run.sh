#!/usr/bin/env bash
# The seed study, retold end to end on the built-in emoji data with dtools commands only.
#
#   bash demo/run.sh [OUT]            (make demo runs it; OUT defaults to demo/out)
#
# Every step below is one dtools command: copy any line into a shell to rerun it by hand.
# Knobs (environment):
#   DEMO_MINUTES  training budget in minutes (default 5)
#   DEMO_SIZE     image size, 16 or 32 (default 32)
#   DEMO_IMAGES   how many emoji to train on (default: all 4,009)
#   DEMO_SAMPLES  samples per fast sampler for the FID table (default 200)
#   DEMO_REF      real images for the FID reference statistics (default 1000)
#   DEMO_DDPM_N   images drawn with the 1000-step ancestral sampler (default 16; it is the slow one)
#   DEMO_PRETRAINED  the longer run the report shows beside yours (default: demo/pretrained/emoji32,
#                    made by the commands in demo/pretrained/README.md; "none" leaves it out)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PRETRAINED=${DEMO_PRETRAINED:-$HERE/pretrained/emoji32}

OUT=${1:-demo/out}
MINUTES=${DEMO_MINUTES:-5}
SIZE=${DEMO_SIZE:-32}
IMAGES=${DEMO_IMAGES:-}
NSAMPLES=${DEMO_SAMPLES:-200}
NREF=${DEMO_REF:-1000}
NDDPM=${DEMO_DDPM_N:-16}
T=1000

command -v dtools >/dev/null || { echo "Error: dtools is not on PATH (run 'make demo', or activate .venv)" >&2; exit 1; }

# A demo folder is ours to replace; anything else is the user's and is never touched.
if [ -e "$OUT" ] && [ ! -e "$OUT/.dtools-demo" ] && [ -n "$(ls -A "$OUT" 2>/dev/null)" ]; then
    echo "Error: $OUT exists and is not a dtools demo folder; choose another: bash demo/run.sh OTHER_DIR" >&2
    exit 1
fi
rm -rf "$OUT"
mkdir -p "$OUT"
touch "$OUT/.dtools-demo"
cd "$OUT"

step() { printf '\n== %s\n' "$*" >&2; }
# seconds NAME CMD...: run CMD, record its wall time in times.txt as "NAME SECONDS"
seconds() {
    local name=$1; shift
    local t0 t1
    t0=$(date +%s%N)
    "$@"
    t1=$(date +%s%N)
    echo "$name $(( (t1 - t0) / 1000000 ))" >>times.txt  # milliseconds
}
t_of() { awk -v k="$1" '$1 == k { printf "%.1f", $2 / 1000 }' times.txt; }

step "1. data: the built-in twemoji set, ${SIZE}x${SIZE}"
seconds prep dtools prep twemoji data --size "$SIZE" ${IMAGES:+--limit "$IMAGES"}
FACE=$(ls data | sed -n '1000p;$p' | head -n 1)

step "2. schedules (the seed's figures 2 and 3)"
dtools schedule linear -T $T -o linear.npy
dtools schedule cosine -T $T -o cosine.npy
dtools schedule sigmoid -T $T -o sigmoid.npy
dtools schedule linear.npy sigmoid.npy cosine.npy --plot schedules.png
dtools schedule linear.npy sigmoid.npy cosine.npy --summary >schedules.txt

step "3. forward noising (the seed's figure 4: rows linear, sigmoid, cosine)"
dtools noise "data/$FACE" --beta linear.npy --beta sigmoid.npy --beta cosine.npy -t x0,50,100,250,500,750,999 \
    | dtools grid --nrow 7 --scale 3 --row-labels linear,sigmoid,cosine -o noising.png

step "4. train for $MINUTES minutes (cosine schedule, EMA, sample grids along the way)"
seconds train dtools train data --beta cosine.npy -o run --max-minutes "$MINUTES"
CKPT=run/model.safetensors

step "5. samples (the default: autoguided by the run's early snapshot), then EMA against raw weights"
dtools sample run -n 64 --seed 1 | dtools grid --scale 2 -o samples.png
dtools sample $CKPT -n 64 --seed 1 --weights ema --guidance 0 | dtools grid --scale 2 -o samples_ema.png
dtools sample $CKPT -n 64 --seed 1 --weights raw --guidance 0 | dtools grid --scale 2 -o samples_raw.png

step "6. samplers: 1000-step ancestral DDPM against fast ones, unguided and autoguided"
seconds ddpm1000 dtools sample $CKPT -n "$NDDPM" --seed 2 --sampler ddpm --steps $T --guidance 0 -o s_ddpm1000
seconds ddim50 dtools sample $CKPT -n "$NSAMPLES" --seed 2 --sampler ddim --steps 50 --guidance 0 -o s_ddim50
seconds dpm20 dtools sample $CKPT -n "$NSAMPLES" --seed 2 --sampler dpm++2m --steps 20 --guidance 0 -o s_dpm20
seconds dpm10 dtools sample $CKPT -n "$NSAMPLES" --seed 2 --sampler dpm++2m --steps 10 --guidance 0 -o s_dpm10
seconds auto20 dtools sample $CKPT -n "$NSAMPLES" --seed 2 -o s_auto20
for s in ddpm1000 ddim50 dpm20 dpm10 auto20; do
    dtools grid "s_$s" --nrow 8 --limit 64 --scale 2 -o "grid_$s.png"
done

step "7. FID against $NREF real images (reference statistics computed once)"
dtools prep data ref --size "$SIZE" --limit "$NREF" >/dev/null 2>&1
dtools fid ref --save-stats ref_stats.safetensors --kid
for s in ddim50 dpm20 dpm10 auto20; do
    dtools fid ref_stats.safetensors "s_$s" --kid --json >"fid_$s.json"
done

PRE=none
if [ "$PRETRAINED" != none ] && [ -f "$PRETRAINED/model.safetensors" ]; then
    step "8. what a longer run gives: the model shipped in demo/pretrained, sampled the same way"
    PRE=$PRETRAINED
    PRE_SHOWN=$(echo "$PRE" | sed "s|^$HERE/|demo/|")  # as a reader of the report would type it
    dtools info "$PRE" >pretrained.txt
    dtools sample "$PRE" -n 64 --seed 1 | dtools grid --scale 2 -o pretrained.png
    PRE_SIZE=$(dtools info "$PRE/model.safetensors" --json | sed -n 's/^ *"image_size": *\([0-9]*\).*/\1/p' | head -n 1)
    if [ "$PRE_SIZE" = "$SIZE" ]; then
        seconds pretrained dtools sample "$PRE" -n "$NSAMPLES" --seed 2 -o s_pretrained
        dtools fid ref_stats.safetensors s_pretrained --kid --json >fid_pretrained.json
    fi
fi

step "9. report"
# json_num FILE KEY FORMAT: one number from a --json report, formatted ("n/a" where there is none)
json_num() {
    [ -f "$1" ] || { echo "n/a"; return; }
    sed -n "s/.*\"$2\": *\([-0-9.eE+]*\).*/\1/p" "$1" | head -n 1 | awk -v f="$3" '{ printf f, $1 }'
}
fidval() { json_num "fid_$1.json" fid "%.1f"; }
kidval() { json_num "fid_$1.json" kid_mean "%.4f"; }
nimg() { ls "s_$1" | wc -l | tr -d ' '; }
LAST=$(ls run/samples | tail -n 1)        # step_XXXXXX.png of the final checkpoint
STEPS=$(echo "$LAST" | sed 's/[^0-9]//g' | sed 's/^0*//')
{
cat <<MD
# dtools demo: the seed study on emoji

Everything here was made by \`demo/run.sh\` with dtools commands alone, on $(nproc) CPU cores,
$(date -u +%Y-%m-%d). Data: $(ls data | wc -l | tr -d ' ') Twitter emoji (CC-BY 4.0) at ${SIZE}x${SIZE}.

## 1. Noise schedules
\`dtools schedule linear.npy sigmoid.npy cosine.npy --plot schedules.png\`

![schedules](schedules.png)

\`\`\`
$(cat schedules.txt)
\`\`\`

## 2. The forward process
Rows: linear, sigmoid, cosine; columns: the clean image x0, then the timestep index t = 50, 100, 250,
500, 750, 999 (the same ε in every row, so rows differ only by schedule).
The linear schedule has destroyed the image by t ≈ 250; cosine keeps it recognisable much longer.

![noising](noising.png)

## 3. Training
\`dtools train data --beta cosine.npy -o run --max-minutes $MINUTES\`: $STEPS steps in $(t_of train) s.

![loss](run/loss.png)

Samples along the way (EMA weights, DPM-Solver++ 20 steps):

MD
for g in run/samples/*.png; do echo "![$(basename "$g" .png)]($g)"; done
cat <<MD

## 4. Samples
\`dtools sample run -n 64 | dtools grid -o samples.png\`: the defaults, DPM-Solver++(2M) on 20 steps
with autoguidance by the run's own checkpoint at an eighth of its length (\`run/guide.safetensors\`,
w = 1; 40 network calls per image).

![samples](samples.png)

## 5. EMA against raw weights
Same seeds, same sampler (DPM-Solver++, 20 steps, unguided so that only the weights differ). The seed report found that sampling from the raw
weights gives colour shift (too light, too red early in training) and artifacts, and that an EMA of
the weights (decay 0.999) cures them: compare the colour balance of the two grids.

| EMA | raw |
|---|---|
| ![ema](samples_ema.png) | ![raw](samples_raw.png) |

## 6. Samplers
| sampler | network calls | images | wall time (s) | FID | KID |
|---|---|---|---|---|---|
| DDPM ancestral | $T | $(nimg ddpm1000) | $(t_of ddpm1000) | $(fidval ddpm1000) | $(kidval ddpm1000) |
| DDIM (η = 0) | 50 | $(nimg ddim50) | $(t_of ddim50) | $(fidval ddim50) | $(kidval ddim50) |
| DPM-Solver++ 2M | 20 | $(nimg dpm20) | $(t_of dpm20) | $(fidval dpm20) | $(kidval dpm20) |
| DPM-Solver++ 2M | 10 | $(nimg dpm10) | $(t_of dpm10) | $(fidval dpm10) | $(kidval dpm10) |
| DPM-Solver++ 2M, autoguided (the default) | $( [ -f run/guide.safetensors ] && echo 40 || echo 20 ) | $(nimg auto20) | $(t_of auto20) | $(fidval auto20) | $(kidval auto20) |

FID and KID against $NREF real images (the 1000-step sampler is too slow on a CPU to draw enough
images for a score; its row shows the cost). With a few hundred samples FID is biased upwards (it
needs thousands for absolute values): compare rows with each other, and trust KID more at this size.

| DDPM, 1000 steps | DDIM, 50 | DPM-Solver++, 20 | DPM-Solver++, 10 | autoguided, 20 |
|---|---|---|---|---|
| ![](grid_ddpm1000.png) | ![](grid_ddim50.png) | ![](grid_dpm20.png) | ![](grid_dpm10.png) | ![](grid_auto20.png) |
MD
if [ "$PRE" != none ]; then
cat <<MD

## 7. What a longer run gives
A few CPU minutes teach the network colours and layouts; recognisable emoji take longer. The model
below was trained by the same \`dtools train\` defaults for longer, packed with \`dtools pack\` (its
EMA weights and its guide in float16, $(du -ck "$PRE"/*.safetensors | tail -n 1 | cut -f 1) kB), and
shipped with dtools; \`demo/pretrained/README.md\` has the commands that made it. Sampled here with
the defaults, as section 4: \`dtools sample $PRE_SHOWN -n 64 | dtools grid -o pretrained.png\`.

![pretrained](pretrained.png)

MD
if [ -f fid_pretrained.json ]; then
cat <<MD
| model | images | wall time (s) | FID | KID |
|---|---|---|---|---|
| yours, $STEPS steps (section 4's sampler) | $(nimg auto20) | $(t_of auto20) | $(fidval auto20) | $(kidval auto20) |
| the shipped one | $(nimg pretrained) | $(t_of pretrained) | $(fidval pretrained) | $(kidval pretrained) |

MD
else
echo "(No FID: the shipped model makes ${PRE_SIZE}x${PRE_SIZE} images, this demo ran at ${SIZE}x${SIZE}.)"
echo
fi
cat <<MD
What \`dtools info\` says of it:

\`\`\`
$(sed "s|$HERE/|demo/|g" pretrained.txt)
\`\`\`
MD
fi
} >REPORT.md
echo "wrote $OUT/REPORT.md" >&2
