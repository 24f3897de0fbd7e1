#!/usr/bin/env bash
# Clean top-1/top-5 of each built-in model with offline weights on the shared set (all images), via
# `robustness run --clean-only`. Results: runs/clean/<model>/results.json (copied to results/clean/).
# Usage: scripts/measure_clean.sh [model ...]   (run from the repository root; ~15 min on 2 cores)
set -euo pipefail
DATA=${ROBUSTNESS_DATA:-../shared/data/imagenet-val-1024}
MODELS=("$@")
if [ ${#MODELS[@]} -eq 0 ]; then
  MODELS=(mobilenet_v2_quantized squeezenet1_0_caffe efficientnet_lite0 efficientnet_lite1 efficientnet_lite2)
fi
mkdir -p results/clean
for model in "${MODELS[@]}"; do
  start=$(date +%s)
  python3 -m robustness.cli run --model "$model" --data "$DATA" --clean-only --no-progress \
    --output "runs/clean/$model"
  cp "runs/clean/$model/results.json" "results/clean/$model.json"
  echo "$model: $(( $(date +%s) - start )) s"
done
