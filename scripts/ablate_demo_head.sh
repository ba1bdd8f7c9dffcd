#!/usr/bin/env bash
# The head ablation of the README ("The demo model"): from the same random base (config/tiny_synth.config.json,
# seed 0) on the same training bag and for the same number of steps, one change at a time against the
# pre-training recipe (config/pretrain_synth.yaml, full fine-tuning with the vision tower), each scored by
# `vlm3d eval` on the held-out scenes (seed 900). Run after scripts/train_demo_model.sh has made the data
# (DEMO_DATA_ONLY=1 is enough).
#
#   bash scripts/ablate_demo_head.sh [VARIANT...]     # default: dense queries dense-no-centre
#
# Variants: dense (the recipe as committed), queries (the previous query head), dense-no-centre (no centre term in
# its own units), view-units (centre channels in each view's token units, `centre_units: view`, instead of one
# scale for every view), by-view (each epoch ordered by view, `batch_by_view: true`: a batch's examples share the
# vision tower's passes), box-radius (the dense head's box terms also at the tokens around each box's centre
# token, `box_radius: 1`).
#
# Environment: VLM3D_BIN (default target/release/vlm3d), DEMO_WORK (default out/demo-model), ABLATE_STEPS
# (stage-1 steps, default 600; stage 2 gets a sixth of it), ABLATE_FROM_DEMO=1 (start every variant from the
# committed models/tiny-synth and models/demo's head instead of the random base, at a fine-tuning's learning
# rates 1e-4 / 2e-5: a change that matters for a trained model shows in fewer steps).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
source env.sh
V="${VLM3D_BIN:-target/release/vlm3d}"
WORK="$(cd "${DEMO_WORK:-out/demo-model}" && pwd)"
S1="${ABLATE_STEPS:-600}"
S2=$((S1 / 6))
if [ ! -f "$WORK/pretrain.yaml" ]; then
    echo "ablate_demo_head.sh: run DEMO_DATA_ONLY=1 bash scripts/train_demo_model.sh first" >&2
    exit 1
fi
VARIANTS=("$@")
[ ${#VARIANTS[@]} -gt 0 ] || VARIANTS=(dense queries dense-no-centre)
for v in "${VARIANTS[@]}"; do
    if [ -n "${ABLATE_FROM_DEMO:-}" ]; then
        R="$WORK/ablation-from-demo/$v"
        mkdir -p "$R"
        BASE="$PWD/models/tiny-synth"
        sed -e "s/^stage1: .*/stage1: {steps: $S1, lr: 1.0e-4, lambda_mse: 1.0, lambda_iou: 0.0}/" \
            -e "s/^stage2: .*/stage2: {steps: $S2, lr: 2.0e-5, lambda_mse: 0.2, lambda_iou: 0.8}/" \
            -e "s#^model: .*#model: $BASE#" -e "s/^warmup_steps: .*/warmup_steps: 20/" \
            "$WORK/pretrain.yaml" > "$R/recipe.yaml"
        echo "init_head: $PWD/models/demo/head.safetensors" >> "$R/recipe.yaml"
    else
        R="$WORK/ablation/$v"
        mkdir -p "$R"
        BASE="$WORK/base-init"
        sed -e "s/^stage1: .*/stage1: {steps: $S1, lr: 5.0e-4, lambda_mse: 1.0, lambda_iou: 0.0}/" \
            -e "s/^stage2: .*/stage2: {steps: $S2, lr: 1.0e-4, lambda_mse: 0.2, lambda_iou: 0.8}/" \
            "$WORK/pretrain.yaml" > "$R/recipe.yaml"
    fi
    case "$v" in
        dense) ;;
        # The previous demo head: 16 queries, spatial readout with its localization loss, presence map.
        queries) sed -i -e 's/^head: .*/head: queries/' -e 's/^queries: .*/queries: 16/' \
            -e 's/^max_negatives: .*/max_negatives: 1/' -e 's/^confidence_weight: .*/confidence_weight: 2.0/' \
            "$R/recipe.yaml"
            echo "presence_weight: 1.0" >> "$R/recipe.yaml" ;;
        dense-no-centre) sed -i 's/^localization_weight: .*/localization_weight: 0.0/' "$R/recipe.yaml" ;;
        view-units) echo "centre_units: view" >> "$R/recipe.yaml" ;;
        # The same recipe with each epoch ordered by view, so a batch's examples share tower passes.
        by-view) echo "batch_by_view: true" >> "$R/recipe.yaml" ;;
        # Box terms at the tokens within one token of each centre where the heat target is ≥ 0.5 (centre sampling).
        box-radius) echo "box_radius: 1" >> "$R/recipe.yaml" ;;
        *) echo "unknown variant $v" >&2; exit 2 ;;
    esac
    T=$SECONDS
    $V train --config "$R/recipe.yaml" --out "$R/run" > "$R/train.log" 2>&1
    echo "$v: trained in $((SECONDS - T)) s"
    $V eval --bag "$WORK/heldout/bag" --out "$R/eval" --model "$BASE" --trained "$R/run" \
        --score-threshold 0.05 > "$R/eval.log" 2>&1
    grep -A2 "^| predictor" "$R/eval/report.md" | tail -1 | sed "s/^/$v: /"
done
