#!/usr/bin/env bash
# Trains the demo model: the committed tiny Qwen2-VL trained by `vlm3d train` (config/train_demo.yaml: LoRA on the
# decoder's attention and the box head) on synthetic scenes, assembled into models/demo/ (the base's files plus
# adapter/ and head.safetensors; with a fully fine-tuning recipe, its model.safetensors instead of adapter/). The
# held-out evaluation set uses another seed.
#
#   bash scripts/train_demo_model.sh [--device cuda] [--resume]     # after: bash scripts/setup.sh
#
# Environment: VLM3D_BIN (a built vlm3d binary: no cargo build, e.g. the CUDA build on a GPU machine), DEMO_WORK
# (work folder, default out/demo-model), DEMO_RECIPE (default config/train_demo.yaml), DEMO_SCENES (training
# scenes, default 32), DEMO_ROPE_THETA (the base's text rotary base, default the fixture's 10000), DEMO_DATA_ONLY=1
# (make the data, the base and the recipe, then stop).
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
    $V synth --out "$WORK/train/nuscenes" --scenes "${DEMO_SCENES:-32}" --samples-per-scene 10 --width 448 --height 252 --seed 100 --quiet
    $V convert-nuscenes --dataroot "$WORK/train/nuscenes" --out "$WORK/train/bag" --no-lidar --force --no-progress
fi
if [ ! -f "$WORK/heldout/bag/metadata.yaml" ]; then
    $V synth --out "$WORK/heldout/nuscenes" --scenes 2 --samples-per-scene 10 --width 448 --height 252 --seed 900 --quiet
    $V convert-nuscenes --dataroot "$WORK/heldout/nuscenes" --out "$WORK/heldout/bag" --no-lidar --force --no-progress
fi
# The base: the fixture's files; DEMO_ROPE_THETA changes the text decoder's rotary base (with head size 16 the
# width section of M-RoPE gets the three lowest frequencies: at 10000 they turn by < 0.06 rad across the image).
mkdir -p "$WORK/base"
for f in config.json model.safetensors tokenizer.json preprocessor_config.json generation_config.json chat_template.json; do
    cp "tests/fixtures/qwen2vl_tiny/$f" "$WORK/base/"
done
if [ -n "${DEMO_ROPE_THETA:-}" ]; then
    python3 - "$WORK/base/config.json" "$DEMO_ROPE_THETA" <<'PY'
import json, sys
p = sys.argv[1]
c = json.load(open(p))
c["text_config"]["rope_parameters"]["rope_theta"] = float(sys.argv[2])
json.dump(c, open(p, "w"), indent=2)
open(p, "a").write("\n")
PY
fi
# The recipe with this work folder's paths.
sed -e "s#^model: .*#model: $WORK/base#" -e "s#^train_bags: .*#train_bags: [$WORK/train/bag]#" \
    "${DEMO_RECIPE:-config/train_demo.yaml}" > "$WORK/recipe.yaml"
if [ -n "${DEMO_DATA_ONLY:-}" ]; then
    exit 0
fi
START=$SECONDS
$V train --config "$WORK/recipe.yaml" --out "$WORK/run" "$@"
echo "training took $((SECONDS - START)) s"
mkdir -p models/demo
rm -rf models/demo/adapter
cp "$WORK/base/"* models/demo/
if [ -f "$WORK/run/model.safetensors" ]; then
    cp "$WORK/run/model.safetensors" models/demo/
else
    cp -r "$WORK/run/adapter" models/demo/adapter
fi
cp "$WORK/run/head.safetensors" models/demo/
du -sh models/demo
