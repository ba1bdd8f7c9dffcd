#!/usr/bin/env bash
# Trains an open-set model and measures it: the tiny Qwen2-VL with LoRA adapters and a box head trained by
# `vlm3d train --config config/train_holdout.yaml` on synthetic scenes with four categories held out of training
# (construction vehicle, trailer, barrier, bicycle: no prompt names them, their boxes are no target), paraphrased
# prompts, synonyms, multi-category prompts and augmentations; then `vlm3d eval` on held-out scenes (another seed),
# (4 scenes), which reads the hold-out back from the run's train_config.yaml and reports seen and unseen categories apart
# (report.md, metrics.json, open_set.png), with the mean-box baseline (which knows no held-out category).
# The synthetic scenes give the held-out categories looks of their own (`vlm3d synth --distinct-looks`).
#
#   bash scripts/train_holdout_model.sh [--resume]      # after: bash scripts/setup.sh && source env.sh
#   MAX_STEPS=5 bash scripts/train_holdout_model.sh     # stop training after 5 steps (a smoke run), then evaluate
#   VLM3D_BIN=target/release/vlm3d bash scripts/train_holdout_model.sh   # a built binary instead of the debug build
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=out/holdout-model
# The crate builds with its ROS 2 glue by default: that needs env.sh (scripts/setup.sh writes it).
if [ -f env.sh ]; then
    # shellcheck disable=SC1091
    source env.sh
else
    echo "train_holdout_model.sh: no env.sh; run bash scripts/setup.sh first" >&2
    exit 1
fi
if [ -n "${VLM3D_BIN:-}" ]; then
    V="$VLM3D_BIN"
else
    cargo build --bin vlm3d
    V=target/debug/vlm3d
fi
if [ ! -f "$WORK/train/bag/metadata.yaml" ]; then
    $V synth --out "$WORK/train/nuscenes" --scenes 8 --samples-per-scene 10 --width 448 --height 252 --seed 100 \
        --distinct-looks --quiet
    $V convert-nuscenes --dataroot "$WORK/train/nuscenes" --out "$WORK/train/bag" --no-lidar --force --no-progress
fi
if [ ! -f "$WORK/heldout/bag/metadata.yaml" ]; then
    # 4 scenes of 24 objects: every held-out category is seen whole by some camera (2 × 16 has no trailer or
    # construction vehicle in view under the all-corners rule).
    $V synth --out "$WORK/heldout/nuscenes" --scenes 4 --samples-per-scene 10 --width 448 --height 252 --seed 900 \
        --objects 24 --distinct-looks --quiet
    $V convert-nuscenes --dataroot "$WORK/heldout/nuscenes" --out "$WORK/heldout/bag" --no-lidar --force --no-progress
fi
EXTRA=()
if [ -n "${MAX_STEPS:-}" ]; then
    EXTRA+=(--max-steps "$MAX_STEPS")
fi
START=$SECONDS
$V train --config config/train_holdout.yaml --out "$WORK/run" "${EXTRA[@]}" "$@"
echo "training took $((SECONDS - START)) s"
# --trained: the hold-out comes from $WORK/run/train_config.yaml (`--holdout a,b` would override it). The tiny
# trained models' confidences stay under 0.3, the default threshold: keep every box above 0.02.
$V eval --bag "$WORK/heldout/bag" --out "$WORK/eval" --model tests/fixtures/qwen2vl_tiny --trained "$WORK/run" \
    --score-threshold 0.02 --baseline mean-box --baseline-bag "$WORK/train/bag" --training-log "$WORK/run/metrics.jsonl"
