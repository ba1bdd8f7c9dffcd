#!/usr/bin/env bash
# Trains the demo model in two steps, as the paper starts from a pretrained Qwen2-VL:
#   1. a base that sees: a tiny Qwen2-VL (config/tiny_synth.config.json) drawn at random by `vlm3d init-model`
#      and trained as a whole with the dense box head on synthetic scenes (config/pretrain_synth.yaml)
#      → models/tiny-synth (a Hugging Face Qwen2-VL folder);
#   2. the paper's recipe on top of it: LoRA r16 / alpha 32 on q, k, v, o, stage 1 MSE then MSE + 3D IoU
#      (config/train_demo.yaml), the head starting from step 1's → models/demo (the base's files, adapter/,
#      head.safetensors).
# Training scenes: `vlm3d synth` seed 100 (DEMO_SCENES, default 64); the held-out evaluation set is seed 900, which
# no training or tuning sees. Prints each step's time.
#
#   bash scripts/train_demo_model.sh [--resume]     # after: bash scripts/setup.sh
#
# Environment: VLM3D_BIN (a built vlm3d binary instead of the release build), DEMO_WORK (work folder, default
# out/demo-model), DEMO_SCENES, DEMO_DATA_ONLY=1 (make the data, the base and the recipes, then stop),
# DEMO_SKIP_PRETRAIN=1 (step 2 only, on the committed models/tiny-synth and the pre-training's head in the
# work folder).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${DEMO_WORK:-out/demo-model}"
# The crate builds with its ROS 2 glue by default: that needs env.sh (scripts/setup.sh writes it).
if [ -f env.sh ]; then
    # shellcheck disable=SC1091
    source env.sh
else
    echo "train_demo_model.sh: no env.sh; run bash scripts/setup.sh first" >&2
    exit 1
fi
if [ -n "${VLM3D_BIN:-}" ]; then
    V="$VLM3D_BIN"
else
    cargo build --release --bin vlm3d
    V=target/release/vlm3d
fi
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
T0=$SECONDS
if [ ! -f "$WORK/train/bag/metadata.yaml" ]; then
    $V synth --out "$WORK/train/nuscenes" --scenes "${DEMO_SCENES:-64}" --samples-per-scene 10 --width 448 --height 252 --seed 100 --quiet
    $V convert-nuscenes --dataroot "$WORK/train/nuscenes" --out "$WORK/train/bag" --no-lidar --force --no-progress
fi
# (Converted again when it predates /vlm3d/annotation_info, which `eval --protocol nuscenes` reads.)
if ! grep -qs annotation_info "$WORK/heldout/bag/metadata.yaml"; then
    [ -d "$WORK/heldout/nuscenes/v1.0-mini" ] ||
        $V synth --out "$WORK/heldout/nuscenes" --scenes 4 --samples-per-scene 10 --width 448 --height 252 --seed 900 --quiet
    $V convert-nuscenes --dataroot "$WORK/heldout/nuscenes" --out "$WORK/heldout/bag" --no-lidar --force --no-progress
fi
# The first 4 training scenes again (the generator is sequential per seed: the same bytes), to score the model on
# scenes it trained on.
if [ ! -f "$WORK/trainsub/bag/metadata.yaml" ]; then
    $V synth --out "$WORK/trainsub/nuscenes" --scenes 4 --samples-per-scene 10 --width 448 --height 252 --seed 100 --quiet
    $V convert-nuscenes --dataroot "$WORK/trainsub/nuscenes" --out "$WORK/trainsub/bag" --no-lidar --force --no-progress
fi
if [ ! -f "$WORK/base-init/model.safetensors" ]; then
    $V init-model --config config/tiny_synth.config.json --like tests/fixtures/qwen2vl_tiny --out "$WORK/base-init" --seed 0
fi
# The recipes with this work folder's paths.
sed -e "s#^model: .*#model: $WORK/base-init#" -e "s#^train_bags: .*#train_bags: [$WORK/train/bag]#" \
    config/pretrain_synth.yaml > "$WORK/pretrain.yaml"
sed -e "s#^model: .*#model: $PWD/models/tiny-synth#" -e "s#^train_bags: .*#train_bags: [$WORK/train/bag]#" \
    -e "s#^init_head: .*#init_head: $WORK/pretrain/head.safetensors#" \
    config/train_demo.yaml > "$WORK/train_demo.yaml"
if [ -n "${DEMO_DATA_ONLY:-}" ]; then
    exit 0
fi

# A Hugging Face folder from a run's fine-tuned weights: the base's configuration, tokenizer and chat template,
# the processor's pixel budget the recipes' 448 × 252.
hf_folder() { # RUN_DIR OUT_DIR
    rm -rf "$2"
    mkdir -p "$2"
    cp "$WORK/base-init/"{config.json,tokenizer.json,generation_config.json,chat_template.json} "$2/"
    sed -e 's/"longest_edge": [0-9]*/"longest_edge": 112896/' "$WORK/base-init/preprocessor_config.json" \
        > "$2/preprocessor_config.json"
    cp "$1/model.safetensors" "$2/"
}
if [ -z "${DEMO_SKIP_PRETRAIN:-}" ]; then
    echo "== step 1: pre-training the base (config/pretrain_synth.yaml)"
    S1=$SECONDS
    $V train --config "$WORK/pretrain.yaml" --out "$WORK/pretrain" "$@"
    echo "pre-training took $((SECONDS - S1)) s"
    hf_folder "$WORK/pretrain" models/tiny-synth
fi

echo "== step 2: the paper's LoRA recipe on models/tiny-synth (config/train_demo.yaml)"
S2=$SECONDS
$V train --config "$WORK/train_demo.yaml" --out "$WORK/run" "$@"
echo "LoRA training took $((SECONDS - S2)) s"
rm -rf models/demo
mkdir -p models/demo
cp models/tiny-synth/* models/demo/
cp -r "$WORK/run/adapter" models/demo/adapter
cp "$WORK/run/head.safetensors" models/demo/
du -sh models/tiny-synth models/demo
echo "train_demo_model.sh took $((SECONDS - T0)) s"
# The README's tables: held-out scenes (seed 900) with the mean-box baseline, and the first training scenes.
$V eval --bag "$WORK/heldout/bag" --out "$WORK/eval" --model models/demo --score-threshold 0.05 \
    --baseline mean-box --baseline-bag "$WORK/train/bag" --training-log "$WORK/run/metrics.jsonl"
$V eval --bag "$WORK/trainsub/bag" --out "$WORK/eval-train" --model models/demo --score-threshold 0.05
# The devkit's own protocol on the held-out scenes (every annotation of its 10 classes, every class prompted).
$V eval --bag "$WORK/heldout/bag" --out "$WORK/eval-nusc" --model models/demo --score-threshold 0.05 \
    --protocol nuscenes --baseline mean-box --baseline-bag "$WORK/train/bag"
