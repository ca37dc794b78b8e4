#!/usr/bin/env bash
# The shipped weights (model/weights), made on a 2-core CPU from phantoms this script generates:
#   benchmarks/cpu_weights.sh WORK_DIR [WEIGHTS_DIR]
# 1. training phantoms: 900 matched series (300 synthetic patients, each scanned as covid, cap and
#    normal: only the disease differs), 192 x 192 and 256 x 256, each scan's own slices (0.625-5 mm,
#    at most 120), phantom seeds 21 and 22;
# 2. at the same time, one process each: the lung network (dicom-node model train-lungs, LUNG_MINUTES
#    of training, default 40) and the classifier (dicom-node model train --recipe cpu, MAX_MINUTES of
#    training, default 65), whose slices are prepared with the phantoms' known lungs (--lungs truth)
#    so it need not wait for the lung network; steps 1-3 take under 2 hours on the 2 cores;
# 4. calibration on phantoms of seeds 9201-9202 (never trained on): temperature, class bias, the
#    indeterminate margin and the region threshold (model evaluate --calibrate);
# 5. held-out evaluation on phantoms of seeds 8401-8403 (HELD_SEEDS, three seeds; never used before): 24 series 256 x 256
#    explicit little endian, 21 series 384 x 384 RLE, 21 series 512 x 512 JPEG-LS, each scan's own
#    slices (at most 300), recorded in the weights' metadata as held_out_metrics.
# One thread per process (two processes where the work splits): on two shared cores, torch's
# threads waiting for each other cost more than they give. DICOM_NODE names the command (default:
# dicom-node on the PATH). Synthetic data: the weights are not for clinical use.
# Fine-tuning instead of training from scratch: INIT=WEIGHTS_DIR starts both networks from those weights
# (the classifier at LR, default a tenth of the recipe's learning rate; the lung network at a quarter
# of its own), TRAIN_SEEDS="23 24" draws other training phantoms, LUNG_SERIES (default 400) is how
# many of them the lung network trains on.
set -euo pipefail
work=${1:?usage: benchmarks/cpu_weights.sh WORK_DIR [WEIGHTS_DIR]}
out=${2:-$work/weights}
node=${DICOM_NODE:-dicom-node}
minutes=${MAX_MINUTES:-65}
lung_minutes=${LUNG_MINUTES:-40}
init=${INIT:-none}
read -r seed_a seed_b <<< "${TRAIN_SEEDS:-21 22}"
read -r held_a held_b held_c <<< "${HELD_SEEDS:-8401 8402 8403}"
lr_args=(); [ -z "${LR:-}" ] || lr_args=(--lr "$LR")
lung_init=(); [ "$init" = none ] || lung_init=(--init "$init")
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$work"
started=$(date +%s)
stamp() { echo "cpu_weights: $1 after $(( ($(date +%s) - started) / 60 )) min" >&2; }

phantoms() {  # NAME SEED COUNT ROWS SYNTAX MAX_SLICES [--matched]
  local dir="$work/$1"
  [ -s "$dir/labels.csv" ] || "$node" phantom-dataset "$dir" --seed "$2" --count "$3" --rows "$4" \
    --native-slices --slices-max "$6" --transfer-syntax "$5" --quiet "${@:7}"
}
merge() {  # OUT PART...: one labels.csv with the sub-folder in the path
  local out="$work/$1"; shift
  echo "series,label,patient_id" > "$out/labels.csv"
  for part in "$@"; do tail -n +2 "$out/$part/labels.csv" | sed "s|^|$part/|"; done >> "$out/labels.csv"
}

phantoms train/a "$seed_a" 450 192 explicit 120 --matched &
phantoms train/b "$seed_b" 450 256 explicit 120 --matched &
wait
merge train a b
stamp "training phantoms written"
# (a rerun keeps what is already trained: delete WEIGHTS_DIR to train again)
mkdir -p "$out"
[ -s "$out/lungs.safetensors" ] || "$node" model train-lungs --data "$work/train" --out "$out" \
  --max-minutes "$lung_minutes" --max-series "${LUNG_SERIES:-400}" "${lung_init[@]}" --workers 1 \
  > "$work/train-lungs.txt" &
[ -s "$out/model.safetensors" ] || "$node" model train --recipe cpu --init "$init" "${lr_args[@]}" --data "$work/train" --out "$out" \
  --lungs truth --max-minutes "$minutes" --workers 1 --cache "$work/cache" --log "$work/train.log" --no-progress \
  --name covid-ct-multiscale-cam --version "${VERSION:-0.3.0}" > "$work/train.json"
wait  # whichever ends last writes the lung network's description into the metadata
stamp "classifier trained"

phantoms calib/a 9201 30 256 explicit 200 &
phantoms calib/b 9202 30 384 explicit 200 &
wait
merge calib a b
"$node" model evaluate --data "$work/calib" --weights "$out" --json "$work/calib-eval/metrics.json" \
  --calibrate --overlays 0 --no-progress
stamp "calibrated"

phantoms held/a "$held_a" 24 256 explicit 300 &
phantoms held/b "$held_b" 21 384 rle 300 &
wait
phantoms held/c "$held_c" 21 512 jpeg-ls 300
merge held a b c
"$node" model evaluate --data "$work/held" --weights "$out" --json "$work/held-eval/metrics.json" \
  --record held_out_metrics --overlays 8 --no-progress
stamp "held-out evaluation done"
echo "weights in $out; held-out figures in $work/held-eval (metrics.json, ROC curves, reliability, overlays)"
