#!/usr/bin/env bash
# Trains the demo model: a tiny Qwen2-VL (the committed random fixture's weights, its text rotary base set to 20 so
# that M-RoPE's width section turns by a usable angle across a 16-token-wide image) fine-tuned fully, vision tower
# included, by `vlm3d train` (config/train_demo.yaml) on synthetic scenes, and assembled into models/demo/ (config,
# tokenizer, the fine-tuned model.safetensors, head.safetensors). The held-out evaluation set uses another seed.
#
#   bash scripts/train_demo_model.sh [--device cuda] [--resume]     # after: bash scripts/setup.sh
#
# Environment: VLM3D_BIN (a built vlm3d binary: no cargo build, e.g. the CUDA build on a GPU machine), DEMO_WORK
# (work folder, default out/demo-model), DEMO_DATA_ONLY=1 (make the data, the base and the recipe, then stop).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${DEMO_WORK:-out/demo-model}"
if [ -n "${VLM3D_BIN:-}" ]; then
    V="$VLM3D_BIN"
else
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
fi
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
if [ ! -f "$WORK/train/bag/metadata.yaml" ]; then
    $V synth --out "$WORK/train/nuscenes" --scenes 32 --samples-per-scene 10 --width 448 --height 252 --seed 100 --quiet
    $V convert-nuscenes --dataroot "$WORK/train/nuscenes" --out "$WORK/train/bag" --no-lidar --force --no-progress
fi
if [ ! -f "$WORK/heldout/bag/metadata.yaml" ]; then
    $V synth --out "$WORK/heldout/nuscenes" --scenes 2 --samples-per-scene 10 --width 448 --height 252 --seed 900 --quiet
    $V convert-nuscenes --dataroot "$WORK/heldout/nuscenes" --out "$WORK/heldout/bag" --no-lidar --force --no-progress
fi
# The base: the fixture's files, the text decoder's rope_theta 10000 → 20 (with head size 16 the width section of
# M-RoPE gets the three lowest frequencies; at 10000 they turn by < 0.06 rad across the image, so attention cannot
# tell columns apart).
mkdir -p "$WORK/base"
for f in config.json model.safetensors tokenizer.json preprocessor_config.json generation_config.json chat_template.json; do
    cp "tests/fixtures/qwen2vl_tiny/$f" "$WORK/base/"
done
python3 - "$WORK/base/config.json" <<'PY'
import json, sys
p = sys.argv[1]
c = json.load(open(p))
c["text_config"]["rope_parameters"]["rope_theta"] = 20.0
json.dump(c, open(p, "w"), indent=2)
open(p, "a").write("\n")
PY
# The recipe with this work folder's paths.
sed -e "s#^model: .*#model: $WORK/base#" -e "s#^train_bags: .*#train_bags: [$WORK/train/bag]#" \
    config/train_demo.yaml > "$WORK/recipe.yaml"
if [ -n "${DEMO_DATA_ONLY:-}" ]; then
    exit 0
fi
START=$SECONDS
$V train --config "$WORK/recipe.yaml" --out "$WORK/run" "$@"
echo "training took $((SECONDS - START)) s"
mkdir -p models/demo
rm -rf models/demo/adapter
cp "$WORK/base/"* models/demo/
cp "$WORK/run/model.safetensors" "$WORK/run/head.safetensors" models/demo/
du -sh models/demo
