#!/usr/bin/env bash
# The shipped weights (model/weights), made on a CPU from phantoms this script generates:
#   benchmarks/cpu_weights.sh WORK_DIR [WEIGHTS_DIR]
# 1. training phantoms: 600 matched series (200 synthetic patients, each scanned as covid, cap and
#    normal), 192x192 and 256x256, 36-60 slices, phantom seeds 11 and 12;
# 2. dicom-node model train --recipe cpu, MAX_MINUTES of training (default 60) on the 2 cores;
# 3. calibration on phantoms of seeds 9101-9102 (never trained on): class bias, the indeterminate
#    margin and the region threshold (model evaluate --calibrate), recorded as calibration_metrics;
# 4. held-out evaluation on phantoms of seeds 8301-8303 (never used before): 21 series 256x256
#    explicit little endian, 12 series 384x384 RLE, 12 series 512x512 JPEG-LS, recorded in the
#    weights' metadata as held_out_metrics.
# Wall time on a shared 2-core machine: about 15 min of phantoms, MAX_MINUTES of training, 15 min of
# evaluation. DICOM_NODE names the command (default: dicom-node on the PATH). Synthetic data: the
# weights are not for clinical use.
set -euo pipefail
work=${1:?usage: benchmarks/cpu_weights.sh WORK_DIR [WEIGHTS_DIR]}
out=${2:-$work/weights}
node=${DICOM_NODE:-dicom-node}
minutes=${MAX_MINUTES:-60}
mkdir -p "$work"

# A data set of several phantom-dataset folders: one labels.csv with the sub-folder in the path.
phantoms() {  # NAME SEED COUNT ROWS SYNTAX [--matched]
  local dir="$work/$1"
  [ -s "$dir/labels.csv" ] || "$node" phantom-dataset "$dir" --seed "$2" --count "$3" --rows "$4" \
    --slices-min 36 --slices-max 60 --transfer-syntax "$5" --quiet "${@:6}"
}
merge() {  # OUT PART...
  local out="$work/$1"; shift
  echo "series,label,patient_id" > "$out/labels.csv"
  for part in "$@"; do tail -n +2 "$out/$part/labels.csv" | sed "s|^|$part/|"; done >> "$out/labels.csv"
}

phantoms train/a 11 300 192 explicit --matched &
phantoms train/b 12 300 256 explicit --matched &
wait
merge train a b
# (a rerun keeps weights already trained: delete WEIGHTS_DIR to train again)
[ -s "$out/model.safetensors" ] || "$node" model train --recipe cpu --init none --data "$work/train" --out "$out" --max-minutes "$minutes" \
  --workers 2 --cache "$work/cache" --log "$work/train.log" --no-progress \
  --name covid-ct-multiscale-cam --version "${VERSION:-0.2.0}" > "$work/train.json"

phantoms calib/a 9101 30 256 explicit &
phantoms calib/b 9102 30 192 explicit &
wait
merge calib a b
"$node" model evaluate --data "$work/calib" --weights "$out" --json "$work/calib-eval/metrics.json" \
  --calibrate --record calibration_metrics --overlays 0 --no-progress

phantoms held/a 8301 21 256 explicit &
phantoms held/b 8302 12 384 rle &
wait
phantoms held/c 8303 12 512 jpeg-ls
merge held a b c
"$node" model evaluate --data "$work/held" --weights "$out" --json "$work/held-eval/metrics.json" \
  --record held_out_metrics --overlays 6 --no-progress
echo "weights in $out; held-out figures in $work/held-eval (metrics.json, ROC curves, overlays)"
