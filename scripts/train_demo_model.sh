#!/usr/bin/env bash
# Trains the demo model: the committed tiny Qwen2-VL trained by `vlm3d train` (config/train_demo.yaml) on synthetic
# scenes, assembled into models/demo/ (the base checkpoint's files, its weights replaced by the fine-tuned ones when
# the recipe fine-tunes fully, else adapter/, and head.safetensors). The held-out evaluation set uses another seed.
#
#   bash scripts/train_demo_model.sh [--resume] [--device cuda]   # after: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=out/demo-model
# The crate builds with its ROS 2 glue by default: that needs env.sh (scripts/setup.sh writes it).
if [ -f env.sh ]; then
    # shellcheck disable=SC1091
    source env.sh
else
    echo "train_demo_model.sh: no env.sh; run bash scripts/setup.sh first" >&2
    exit 1
fi
cargo build --bin vlm3d
V=target/debug/vlm3d
if [ ! -f "$WORK/train/bag/metadata.yaml" ]; then
    $V synth --out "$WORK/train/nuscenes" --scenes 8 --samples-per-scene 10 --width 448 --height 252 --seed 100 --quiet
    $V convert-nuscenes --dataroot "$WORK/train/nuscenes" --out "$WORK/train/bag" --no-lidar --force --no-progress
fi
if [ ! -f "$WORK/heldout/bag/metadata.yaml" ]; then
    $V synth --out "$WORK/heldout/nuscenes" --scenes 2 --samples-per-scene 10 --width 448 --height 252 --seed 900 --quiet
    $V convert-nuscenes --dataroot "$WORK/heldout/nuscenes" --out "$WORK/heldout/bag" --no-lidar --force --no-progress
fi
START=$SECONDS
$V train --config config/train_demo.yaml --out "$WORK/run" "$@"
echo "training took $((SECONDS - START)) s"
mkdir -p models/demo
for f in config.json model.safetensors tokenizer.json preprocessor_config.json generation_config.json chat_template.json; do
    cp "tests/fixtures/qwen2vl_tiny/$f" models/demo/ 2>/dev/null || true
done
rm -rf models/demo/adapter
if [ -f "$WORK/run/model.safetensors" ]; then
    # Full fine-tuning: the trained weights are the demo checkpoint's own.
    cp "$WORK/run/model.safetensors" models/demo/model.safetensors
else
    cp -r "$WORK/run/adapter" models/demo/adapter
fi
cp "$WORK/run/head.safetensors" models/demo/head.safetensors
du -sh models/demo
