#!/usr/bin/env bash
# A site retrains: the command a site runs on its own labelled series, with the defaults (on a
# machine without a GPU: the CPU recipe, starting from the shipped weights), on a small set, then
# the figures on fresh series; and the same from scratch (--init none) for comparison.
#   benchmarks/site_retrain.sh WORK_DIR [default|scratch|both]     (default: both)
# 30 training series (10 per class, 30-45 slices, 256x256, phantom seed 7301), 25 minutes of
# training per arm, 15 fresh phantoms (seed 7302) to evaluate: prints series accuracy and pointing
# game (targets: >= 0.9 and >= 0.8). DICOM_NODE names the command (default: dicom-node on the PATH).
# Synthetic data, not for clinical use.
set -euo pipefail
work=${1:?usage: benchmarks/site_retrain.sh WORK_DIR [default|scratch|both]}
arms=${2:-both}
node=${DICOM_NODE:-dicom-node}
mkdir -p "$work"
[ -s "$work/site/labels.csv" ] || "$node" phantom-dataset "$work/site" --count 30 --seed 7301 --rows 256 --slices-min 30 --slices-max 45 --quiet
[ -s "$work/fresh/labels.csv" ] || "$node" phantom-dataset "$work/fresh" --count 15 --seed 7302 --rows 256 --slices-min 30 --slices-max 45 --quiet

arm() {  # NAME [TRAIN OPTION...]
  local name=$1; shift
  local start
  start=$(date +%s)
  "$node" model train --data "$work/site" --labels "$work/site/labels.csv" --out "$work/$name/weights" --max-minutes 25 --no-progress "$@" > "$work/$name.train.json"
  echo "$name: training $(( ($(date +%s) - start) / 60 )) min"
  "$node" model evaluate --data "$work/fresh" --weights "$work/$name/weights" --json "$work/$name/eval/metrics.json" --overlays 2 --no-progress \
    | python3 -c 'import json,sys; h=json.load(sys.stdin); print(sys.argv[1] + ": series accuracy", h["series_accuracy"], "(target 0.9); pointing game", h["pointing_game"], "(target 0.8)")' "$name"
}
case "$arms" in
  default) arm default ;;
  scratch) arm scratch --init none ;;
  both) arm default; arm scratch --init none ;;
  *) echo "usage: benchmarks/site_retrain.sh WORK_DIR [default|scratch|both]" >&2; exit 2 ;;
esac
