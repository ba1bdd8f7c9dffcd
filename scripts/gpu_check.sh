#!/usr/bin/env bash
# The GPU issue's acceptance in one device call, prepared on the dev machine (no GPU, no CUDA install needed).
#
#   bash scripts/gpu_check.sh prepare   # here: CUDA toolchain from wheels, cuda build of vlm3d and the detector
#                                       # tests, stripped and xz-compressed into .gpu/ (git-ignored, < 64 MiB)
#   then one device call (the `device` tool), carrying .gpu/:
#   bash scripts/gpu_check.sh device    # there: CUDA vs CPU parity test, `vlm3d bench` on the GPU (bf16, f32),
#                                       # PyTorch/transformers on the same GPU, GPU memory peaks; all into $OUT
#
# The first `prepare` compiles candle's CUDA kernels: about 28 minutes on 2 cores (../shared/notes/cuda-build.md);
# later runs reuse the target folder ($VLM3D_CUDA_TARGET, default ~/.cache/vlm3d/cuda-target).
# Status: written in a session without a device; not yet run end to end.
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
    cp "$ROOT/scripts/bench_hf_qwen2vl.py" "$G/"
    du -sh "$G"
    echo "next: a device call with carry [\".gpu\"] running: bash scripts/gpu_check.sh device"
}

device() {
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
    /tmp/vlm3d-cuda info
    echo "== parity: tiny fixture on CUDA (f32, bf16) vs CPU"
    (cd "$ROOT" && /tmp/model_detector-cuda cuda_matches_cpu_on_the_fixture --nocapture) || echo "PARITY FAILED"
    peak() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "/tmp/smi_$1" & SMI=$!; }
    stop() { kill "$SMI" 2>/dev/null; wait "$SMI" 2>/dev/null || true
        echo "$1 GPU memory peak MiB: $(sort -n "/tmp/smi_$1" | tail -n 1)" | tee -a "$OUT/peaks.txt"; }
    for dtype in bf16 f32; do
        echo "== vlm3d bench, Qwen2-VL-2B dims, cuda $dtype"
        peak "vlm3d-$dtype"
        /tmp/vlm3d-cuda bench --models 2b --views 1,6 --device cuda --dtype "$dtype" --warmup 3 --repeat 10 |
            tee "$OUT/vlm3d_bench_$dtype.md"
        stop "vlm3d-$dtype"
        echo "== PyTorch/transformers (sdpa), cuda $dtype"
        peak "torch-$dtype"
        $PY "$G/bench_hf_qwen2vl.py" --models 2b --views 1,6 --device cuda --dtype "$dtype" |
            tee "$OUT/torch_bench_$dtype.md" || echo "PyTorch side failed"
        stop "torch-$dtype"
    done
}

case "$mode" in
    prepare) prepare ;;
    device) device ;;
    *) echo "usage: bash scripts/gpu_check.sh prepare|device" >&2; exit 2 ;;
esac
