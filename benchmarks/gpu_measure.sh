#!/usr/bin/env bash
# GPU measurement of issue 12 ("Measure", second bullet): `robustness run` on the shared images x all 52
# conditions (clean + the paper's 51 levels) for EfficientNet-Lite0 and a random-weight torchvision
# ResNet-50, local engine, with `--pipeline device` and `--pipeline reference`; for each run it records the
# wall time of the whole command, the end-to-end rate (evaluated images / wall time), the model-only rate
# (the forward pass alone on preprocessed batches: benchmarks/bench_pipeline.py's model_only, under the same
# inference settings as the run), their ratio, and the GPU utilisation (nvidia-smi, sampled every 500 ms in
# the background while the command runs). Everything lands in ONE file, gpu_measure.md, in the results folder
# (per-run logs beside it in logs/).
#
# Usage, from the repository root, on a machine with an NVIDIA GPU:
#     bash benchmarks/gpu_measure.sh [RESULTS_DIR]      # default $OUT, else runs/gpu-measure-<timestamp>
# It stops at once (exit 2) when there is no usable GPU. Environment knobs:
#     IMAGES=1024            images per condition (the shared set's first N)
#     MODELS="efficientnet_lite0 torchvision:resnet50"      (torchvision:resnet50 runs with --weights random)
#     PIPELINES="device reference"                           (values of robustness run --pipeline)
#     DATA=DIR               image folder (default shared/data/imagenet-val-1024, else ../shared/...)
#     BATCH_SIZE=32          for the runs and the model-only rate; WORKERS=N passes --workers (default: the
#                            engine's, cpus - 1 on CUDA)
#     PYTHON=python3
#     SMOKE=1                a dry run: IMAGES=2, clean condition only; with SMOKE_DEVICE=cpu it runs on the CPU
#                            (no GPU needed, no utilisation), and without a --pipeline flag in this checkout
#                            it runs the engine's default pipeline and says so in the table.
# The four full runs take tens of minutes on one GPU (the reference pipeline is CPU-bound: JPEG 2000 alone is
# ~0.2 CPU s per evaluated image); run a subset per call with MODELS / PIPELINES if a call is time-limited.
# The prediction cache and the distortion store are off (--no-cache): every run computes everything.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
SMOKE=${SMOKE:-0}
IMAGES=${IMAGES:-1024}
MODELS=${MODELS:-"efficientnet_lite0 torchvision:resnet50"}
PIPELINES=${PIPELINES:-"device reference"}
BATCH_SIZE=${BATCH_SIZE:-32}
DEVICE=cuda
if [ "$SMOKE" = 1 ]; then
    IMAGES=2
    DEVICE=${SMOKE_DEVICE:-cuda}
fi
if [ -z "${DATA:-}" ]; then
    DATA=shared/data/imagenet-val-1024
    [ -d "$DATA" ] || DATA=../shared/data/imagenet-val-1024
fi
RESULTS=${1:-${OUT:-runs/gpu-measure-$(date -u +%Y%m%d-%H%M%S)}}

fail() { echo "gpu_measure: $*" >&2; exit 2; }

# ---- fail fast: a GPU (unless a CPU smoke run), the data, the flags this script relies on
if [ "$DEVICE" = cuda ]; then
    command -v nvidia-smi >/dev/null || fail "no nvidia-smi: this script measures a GPU (SMOKE=1 SMOKE_DEVICE=cpu for a CPU dry run)"
    nvidia-smi -L >/dev/null 2>&1 || fail "nvidia-smi sees no GPU: $(nvidia-smi -L 2>&1 | head -1)"
    "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
        || fail "torch.cuda.is_available() is False (a CPU-only torch build, or no driver)"
elif [ "$DEVICE" != cpu ]; then
    fail "SMOKE_DEVICE must be cuda or cpu, got $DEVICE"
fi
[ -d "$DATA" ] || fail "no image folder $DATA (set DATA=DIR)"
HELP=$("$PYTHON" -m robustness run --help)
HAS_PIPELINE=0
if grep -q -- "--pipeline" <<<"$HELP"; then
    HAS_PIPELINE=1
elif [ "$SMOKE" != 1 ]; then
    fail "this checkout's 'robustness run' has no --pipeline flag (the device-side pipeline adds it)"
fi

mkdir -p "$RESULTS/logs"
REPORT="$RESULTS/gpu_measure.md"
CONDITIONS_ARGS=()
CONDITIONS=52
if [ "$SMOKE" = 1 ]; then
    CONDITIONS_ARGS=(--clean-only)
    CONDITIONS=1
fi
WORKER_ARGS=()
if [ -n "${WORKERS:-}" ]; then WORKER_ARGS=(--workers "$WORKERS"); fi

if [ "$DEVICE" = cuda ]; then
    GPU=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1)
else
    GPU="none (CPU smoke run)"
fi
{
    echo "# GPU measurement (benchmarks/gpu_measure.sh)"
    echo
    echo "- date (UTC): $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "- machine: $(uname -n), $(nproc) CPU cores, GPU: $GPU"
    echo "- software: $("$PYTHON" -c 'import torch, robustness; print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), robustness {robustness.__version__}")')"
    echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "- job: $IMAGES images from $DATA x $CONDITIONS conditions, batch $BATCH_SIZE, device $DEVICE, workers ${WORKERS:-default}, --no-cache$([ "$SMOKE" = 1 ] && echo ', SMOKE run')"
    echo
    echo "Wall s: the whole \`robustness run\` command (start-up, model load, inference, results, figure; no report)."
    echo "End-to-end img/s = evaluated (image, condition) pairs / wall s; ratio = end-to-end / model-only;"
    echo "GPU utilisation: nvidia-smi utilization.gpu sampled every 500 ms during the command."
    echo
    echo "| model | pipeline | evaluated images | wall s | end-to-end img/s | model-only img/s | ratio | GPU util mean % | GPU util max % | clean top-1 % | mean top-1 % (all conditions) |"
    echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
} >"$REPORT"

# The forward pass alone (bench_pipeline.model_only) on a batch of the model's own preprocessed images,
# under the run's inference settings (deterministic algorithms, TF32 off): images/s.
model_only_rate() {
    "$PYTHON" - "$1" "$2" "$DATA" "$DEVICE" "$BATCH_SIZE" <<'PY'
import sys

sys.path.insert(0, "benchmarks")
import torch
from bench_pipeline import model_only

from robustness import load_dataset, load_model
from robustness.evaluation import inference_settings

spec, weights, data, device, batch_size = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
model = load_model(spec, weights=None if weights == "random" else "default", device=device).eval()
dataset = load_dataset(data, limit=batch_size)
batch = torch.stack([model.preprocess(dataset.load(i % len(dataset))[0]) for i in range(batch_size)]).to(device)
with inference_settings(device):
    rate, _ = model_only(model, batch, 64 * batch_size if device != "cpu" else batch_size, device)
print(f"{rate:.1f}")
PY
}

for model in $MODELS; do
    model_args=(--model "$model")
    weights=default
    if [ "$model" = torchvision:resnet50 ]; then
        model_args+=(--weights random)
        weights=random
    fi
    safe=${model//[^A-Za-z0-9_.-]/_}
    rate=$(model_only_rate "$model" "$weights" 2>"$RESULTS/logs/$safe-model-only.log") \
        || fail "model-only rate of $model failed: see $RESULTS/logs/$safe-model-only.log"
    for pipeline in $PIPELINES; do
        pipeline_args=(--pipeline "$pipeline")
        label=$pipeline
        if [ "$HAS_PIPELINE" = 0 ]; then
            pipeline_args=()
            label="$pipeline requested; no --pipeline flag here: the default"
        fi
        log="$RESULTS/logs/$safe-$pipeline"
        monitor=
        if [ "$DEVICE" = cuda ]; then
            nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 500 >"$log.util.csv" &
            monitor=$!
        fi
        start=$(date +%s.%N)
        status=0
        "$PYTHON" -m robustness run "${model_args[@]}" --data "$DATA" --images "$IMAGES" ${CONDITIONS_ARGS[@]+"${CONDITIONS_ARGS[@]}"} \
            ${pipeline_args[@]+"${pipeline_args[@]}"} --device "$DEVICE" --batch-size "$BATCH_SIZE" \
            ${WORKER_ARGS[@]+"${WORKER_ARGS[@]}"} --no-cache \
            --no-progress --no-report --output "$RESULTS/runs/$safe-$pipeline" >"$log.log" 2>&1 || status=$?
        end=$(date +%s.%N)
        if [ -n "$monitor" ]; then
            kill "$monitor" 2>/dev/null || true
            wait "$monitor" 2>/dev/null || true
            util=$(awk -F, '$1 ~ /^ *[0-9]+ *$/ {s += $1; n++; if ($1 > m) m = $1} END {if (n) printf "%.0f | %d", s / n, m; else print "n/a | n/a"}' "$log.util.csv")
        else
            util="n/a | n/a"
        fi
        [ "$status" = 0 ] || fail "robustness run $model --pipeline $pipeline failed (exit $status): see $log.log"
        # evaluated (image, condition) pairs and top-1 from the run's results.json
        read -r evaluated accuracy < <("$PYTHON" - "$RESULTS/runs/$safe-$pipeline/results.json" <<'PY'
import json, sys

rows = [r for r in json.load(open(sys.argv[1])) if isinstance(r, dict) and "top1" in r]
clean = [r["top1"] for r in rows if r["distortion"] == "clean"]
print(sum(r["n"] for r in rows), f"{100 * clean[0]:.1f}|{100 * sum(r['top1'] for r in rows) / len(rows):.2f}")
PY
        )
        row=$(awk -v n="$evaluated" -v a="$start" -v b="$end" -v r="$rate" \
            'BEGIN {w = b - a; e = n / w; printf "%d | %.1f | %.1f | %.1f | %.3f", n, w, e, r, e / r}')
        echo "| $model | $label | $row | $util | ${accuracy//|/ | } |" >>"$REPORT"
        echo "gpu_measure: $model, $label: $row | $util | ${accuracy//|/ | }"
    done
done
echo "gpu_measure: wrote $REPORT"
