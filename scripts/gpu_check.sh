#!/usr/bin/env bash
# The GPU issue's acceptance in one device call, prepared on the dev machine (no GPU, no CUDA install needed).
#
#   bash scripts/gpu_check.sh prepare   # here: CUDA toolchain from wheels, cuda build of vlm3d and the detector
#                                       # tests, stripped and xz-compressed into .gpu/ (git-ignored, < 64 MiB)
#   then one device call (the `device` tool), carrying .gpu/:
#   bash scripts/gpu_check.sh device    # there: CUDA vs CPU parity (forward, one training step), `vlm3d bench
#                                       # --train` and `vlm3d bench` (bf16, f32; 1 and 6 views, a second prompt)
#                                       # on the GPU beside scripts/bench_hf_qwen2vl.py (PyTorch, bf16), `vlm3d
#                                       # train` on cuda vs cpu, GPU memory peaks; all into $OUT
#
# The first `prepare` compiles candle's CUDA kernels: about 28 minutes on 2 cores (../shared/notes/cuda-build.md);
# later runs reuse the target folder ($VLM3D_CUDA_TARGET, default ~/.cache/vlm3d/cuda-target).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
G="$ROOT/.gpu"
mode="${1:-}"

prepare() {
    # shellcheck disable=SC1091
    bash "$ROOT/scripts/setup.sh" --cuda
    # shellcheck disable=SC1091
    source "$ROOT/env-cuda.sh"
    export CARGO_TARGET_DIR="${VLM3D_CUDA_TARGET:-$HOME/.cache/vlm3d/cuda-target}"
    mkdir -p "$G"
    (cd "$ROOT" && cargo build --release --no-default-features --features cuda,openblas --bin vlm3d)
    # The detector tests as a binary (the parity test skips itself without a GPU).
    local test_bin
    test_bin=$(cd "$ROOT" && cargo test --release --no-default-features --features cuda,openblas \
        --test model_detector --no-run --message-format=json 2>/dev/null |
        python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "model_detector" and m.get("executable"):
        print(m["executable"])' | tail -n 1)
    for pair in "$CARGO_TARGET_DIR/release/vlm3d:vlm3d-cuda" "$test_bin:model_detector-cuda"; do
        strip -o "/tmp/${pair##*:}" "${pair%%:*}"
        xz -T2 -6 -c "/tmp/${pair##*:}" > "$G/${pair##*:}.xz"
    done
    du -sh "$G"
    echo "next: a device call with carry [\".gpu\"] running: bash scripts/gpu_check.sh device"
}

# There: the CUDA runtime libraries on the library path and the carried binaries unpacked into /tmp.
unpack() {
    OUT="${OUT:-/tmp/gpu-out}"
    mkdir -p "$OUT"
    exec > >(tee -a "$OUT/gpu_check.log") 2>&1
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    PY="${PY:-python3}"
    SP=$($PY -c 'import site; print(site.getsitepackages()[0])' 2>/dev/null || true)
    LIBDIRS=$(ls -d "$SP"/nvidia/*/lib 2>/dev/null | tr '\n' ':' || true)
    export LD_LIBRARY_PATH="${LIBDIRS}/usr/local/nvidia/lib64:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
    for b in vlm3d-cuda model_detector-cuda; do
        $PY -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
            "$G/$b.xz" "/tmp/$b"
        chmod +x "/tmp/$b"
    done
}

# There: candidate demo-model recipes trained side by side on the one GPU (the tiny model leaves it mostly idle),
# each a whole schedule; their trained parts and logs come back in $OUT/<name>/ to be scored here with
# `vlm3d eval` on the held-out seed. Candidates: the pre-training recipe scripts/train_demo_model.sh writes (`demo`:
# config/pretrain_synth.yaml with its work folder's paths; DEMO_SCENES passes through) and variants of it;
# SWEEP_ONLY=demo runs that one alone.
sweep() {
    unpack
    VLM3D_BIN=/tmp/vlm3d-cuda DEMO_WORK=/tmp/demo-model DEMO_DATA_ONLY=1 bash "$ROOT/scripts/train_demo_model.sh"
    local pids=() name
    local specs=("demo:" "theta10k:base_rope_theta=10000" "flip:augment: {flip: 0.5}")
    [ -n "${SWEEP_ONLY:-}" ] && specs=("$SWEEP_ONLY:")
    for spec in "${specs[@]}"; do
        name="${spec%%:*}"
        mkdir -p "/tmp/sweep/$name"
        sed -n '1,$p' "/tmp/demo-model/pretrain.yaml" > "/tmp/sweep/$name/recipe.yaml"
        case "${spec#*:}" in
            base_rope_theta=10000) sed -i "s#^model: .*#model: $ROOT/tests/fixtures/qwen2vl_tiny#" "/tmp/sweep/$name/recipe.yaml" ;;
            "") ;;
            *) echo "${spec#*:}" >> "/tmp/sweep/$name/recipe.yaml" ;;
        esac
        (timeout "${SWEEP_TIMEOUT:-420}" /tmp/vlm3d-cuda train --config "/tmp/sweep/$name/recipe.yaml" --out "/tmp/sweep/$name/run" \
            --device cuda --no-progress > "/tmp/sweep/$name/train.log" 2>&1; echo "rc=$?" >> "/tmp/sweep/$name/train.log") &
        pids+=($!)
    done
    # A run cut by the timeout exits non-zero: its newest checkpoint still comes back.
    wait "${pids[@]}" || true
    for d in /tmp/sweep/*/; do
        name=$(basename "$d")
        mkdir -p "$OUT/$name"
        tail -n 3 "$d/train.log"
        cp "$d/recipe.yaml" "$d/train.log" "$OUT/$name/"
        local last
        last=$(ls -d "$d"/run/checkpoints/step-*[0-9] 2>/dev/null | tail -n 1 || true)
        [ -n "$last" ] && cp -r "$last" "$OUT/$name/last-checkpoint"
        cp "$d/run/metrics.jsonl" "$d/run/head.safetensors" "$d/run/model.safetensors" "$OUT/$name/" 2>/dev/null || true
    done
}

device() {
    unpack
    /tmp/vlm3d-cuda info
    echo "== parity: tiny fixture on CUDA (f32, bf16) vs CPU; one full fine-tuning step's loss and gradients"
    (cd "$ROOT" && /tmp/model_detector-cuda cuda_ --nocapture --test-threads 1) || echo "PARITY FAILED"
    peak() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "/tmp/smi_$1" & SMI=$!; }
    stop() { kill "$SMI" 2>/dev/null; wait "$SMI" 2>/dev/null || true
        echo "$1 GPU memory peak MiB: $(sort -n "/tmp/smi_$1" | tail -n 1)" | tee -a "$OUT/peaks.txt"; }
    echo "== vlm3d bench --train (LoRA step), cuda f32"
    peak train-tiny
    /tmp/vlm3d-cuda bench --train --models tiny --batch 4 --repeat 10 --device cuda | tee "$OUT/train_bench_tiny.md"
    stop train-tiny
    peak train-2b
    /tmp/vlm3d-cuda bench --train --models 2b --batch 1 --repeat 5 --device cuda | tee "$OUT/train_bench_2b.md"
    stop train-2b
    for dtype in bf16 f32; do
        echo "== vlm3d bench (forward), Qwen2-VL-2B dims, cuda $dtype"
        peak "vlm3d-$dtype"
        /tmp/vlm3d-cuda bench --models 2b --views 1,6 --device cuda --dtype "$dtype" --warmup 3 --repeat 10 |
            tee "$OUT/vlm3d_bench_$dtype.md"
        stop "vlm3d-$dtype"
    done
    # The peer on the same GPU: transformers (the machine's torch image has it), same dims, views and prompt.
    echo "== PyTorch + transformers (sdpa), Qwen2-VL-2B dims, cuda bf16"
    peak hf-bf16
    (cd "$ROOT" && PYTHONUNBUFFERED=1 python3 scripts/bench_hf_qwen2vl.py --models 2b --views 1,6 --device cuda \
        --dtype bf16 --warmup 3 --repeat 10) | tee "$OUT/hf_bench_bf16.md" || echo "PYTORCH BENCH FAILED"
    stop hf-bf16
    echo "== vlm3d train on the GPU: the demo recipe's data (seed 100), full fine-tuning with the vision tower"
    local W=/tmp/gpu-train
    rm -rf "$W" && mkdir -p "$W"
    /tmp/vlm3d-cuda synth --out "$W/nuscenes" --scenes 8 --samples-per-scene 10 --width 448 --height 252 --seed 100 --quiet
    /tmp/vlm3d-cuda convert-nuscenes --dataroot "$W/nuscenes" --out "$W/bag" --no-lidar --force --no-progress > /dev/null
    sed -e "s#^model: .*#model: $ROOT/tests/fixtures/qwen2vl_tiny#; s#^train_bags: .*#train_bags: [$W/bag]#" \
        "$ROOT/config/pretrain_synth.yaml" > "$W/recipe.yaml"
    # Full fine-tuning with the vision tower (the pre-training recipe's): the heaviest graph the trainer builds.
    grep -q '^finetune:' "$W/recipe.yaml" || printf 'finetune: full\ntrain_vision: true\n' >> "$W/recipe.yaml"
    for dev in cuda cpu; do
        peak "train-$dev"
        /tmp/vlm3d-cuda train --config "$W/recipe.yaml" --out "$W/run-$dev" --device "$dev" --max-steps 60 --no-progress \
            2>&1 | tail -n 3
        stop "train-$dev"
        cp "$W/run-$dev/metrics.jsonl" "$OUT/train_metrics_$dev.jsonl"
    done
    python3 - "$OUT" <<'PY'
import json, statistics, sys
out = sys.argv[1]
rows = {d: [json.loads(l) for l in open(f"{out}/train_metrics_{d}.jsonl")] for d in ("cuda", "cpu")}
for d, r in rows.items():
    eps = statistics.median(x["examples_per_s"] for x in r[5:])
    print(f"{d}: {len(r)} steps, median {eps:.1f} examples/s, loss step 1 {r[0]['loss']:.6f}, last {r[-1]['loss']:.6f}")
d = max(abs(a["loss"] - b["loss"]) for a, b in zip(rows["cuda"][:5], rows["cpu"][:5]))
print(f"first 5 steps: largest |loss cuda - loss cpu| = {d:.3e}")
PY
}

case "$mode" in
    prepare) prepare ;;
    device) device ;;
    sweep) sweep ;;
    *) echo "usage: bash scripts/gpu_check.sh prepare|device|sweep" >&2; exit 2 ;;
esac
