#!/usr/bin/env bash
# One prepared run on a lent CUDA machine (16 cores, no network): install the carried wheels,
# generate phantoms, train the weights the node ships (the CPU-friendly configuration recorded in
# their metadata), evaluate them on held-out phantoms, and benchmark inference on CUDA and on the
# CPU cores. Writes under $OUT (at most 8 files come back): weights/model.safetensors,
# weights/metadata.json, train.log, metrics.json, inference_cuda.json, inference_cpu.json,
# timings.txt. SMALL=1: a seconds-long dry run of the plumbing on the CPU. ITER, LR_STEP,
# MAX_MINUTES: training length; THRESHOLD: the region threshold evaluated; BENCHMARKS=0: no benchmarks.
# Synthetic phantoms: the numbers prove the pipeline, nothing clinical. Not for clinical use.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
W=$(mktemp -d)
PY=${PY:-python3}
T0=$(date +%s)
stamp() { echo "$1 $(( $(date +%s) - T0 )) s" | tee -a "$OUT/timings.txt"; }
mkdir -p "$OUT/weights"

if [ -d .wheels ] && ! "$PY" -c "import pydicom, monai, pydantic_settings" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --target "$W/deps" .wheels/*.whl
    export PYTHONPATH="$W/deps"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import torch, pydicom, monai, model.inference.multiscale_cam, dicom_node.cli; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" | tee -a "$OUT/timings.txt"

if [ "${SMALL:-0}" = 1 ]; then
    DEVICE=cpu; SETS=2; PER=3; HELD=3; ROWS=64; HROWS=64; TRAIN=(--iterations 4 --image-size 64 --batch 4 --validate-every 2 --folds 2); BENCH=(--slices 16 --rows 64 --ig-slices 1 --skip-memory); JOBS=2
else
    ITER=${ITER:-4000}; LR_STEP=${LR_STEP:-3000}
    DEVICE=cuda; SETS=12; PER=12; HELD=5; ROWS=256; HROWS=512; JOBS=16; BENCH=(--repeat 2)
    TRAIN=(--iterations "$ITER" --image-size 128 --batch 16 --lr 5e-4 --lr-step "$LR_STEP" --validate-every 250 --patience 3000 --augment --max-minutes "${MAX_MINUTES:-4}")
fi

# Phantoms: matched training sets (each patient scanned once per class: anatomy says nothing of
# the label), seeds 7001+; held-out sets, seeds 8001+, never used in training; half compressed.
gen() { OMP_NUM_THREADS=1 "$PY" -m dicom_node.cli phantom-dataset "$@" --quiet >/dev/null; }
for i in $(seq 1 "$SETS"); do
    gen "$W/train/set$i" --count "$PER" --seed $((7000 + i)) --rows "$ROWS" --slices-min 48 --slices-max 112 --matched &
    while (( $(jobs -rp | wc -l) >= JOBS )); do sleep 0.2; done
done
for i in 1 2 3 4 5 6; do
    rows=$(( i <= 3 ? ROWS : HROWS )); ts=$([ $((i % 2)) = 0 ] && echo jpeg-ls || echo explicit)
    gen "$W/held/set$i" --count "$HELD" --seed $((8000 + i)) --rows "$rows" --slices-min 48 --slices-max 128 --transfer-syntax "$ts" &
    while (( $(jobs -rp | wc -l) >= JOBS )); do sleep 0.2; done
done
wait
for kind in train held; do
    { echo "series,label,patient_id"; for d in "$W/$kind"/set*; do tail -n +2 "$d/labels.csv" | sed "s#^#$(basename "$d")/#"; done; } > "$W/$kind/labels.csv"
done
stamp "phantoms ($(($(wc -l < "$W/train/labels.csv") - 1)) training, $(($(wc -l < "$W/held/labels.csv") - 1)) held-out):"

"$PY" -m dicom_node.cli model train --data "$W/train" --labels "$W/train/labels.csv" --out "$OUT/weights" --device "$DEVICE" \
    --workers "$JOBS" --cache "$W/cache" "${TRAIN[@]}" --version 0.1.0 --log "$OUT/train.log" --no-progress > "$W/train_summary.json"
stamp "trained:"

"$PY" -m dicom_node.cli model evaluate --data "$W/held" --labels "$W/held/labels.csv" --weights "$OUT/weights" --device "$DEVICE" \
    --json "$W/eval/metrics.json" --record held_out_metrics ${THRESHOLD:+--threshold "$THRESHOLD"} --no-progress > "$W/eval_summary.json"
cp "$W/eval/metrics.json" "$OUT/metrics.json"
stamp "evaluated:"
cat "$W/eval_summary.json"

[ "${BENCHMARKS:-1}" = 1 ] || exit 0
if [ "$DEVICE" = cuda ]; then
    "$PY" benchmarks/inference.py --weights "$OUT/weights" --device cuda "${BENCH[@]}" --json "$OUT/inference_cuda.json" | tail -12
    stamp "benchmark cuda:"
fi
OMP_NUM_THREADS=${CPU_THREADS:-2} "$PY" benchmarks/inference.py --weights "$OUT/weights" --device cpu --ig-slices 2 --skip-memory ${SMALL:+--slices 16 --rows 64} --json "$OUT/inference_cpu.json" | tail -8
stamp "benchmark cpu:"
rm -rf "$W"
