#!/usr/bin/env bash
# Conversion benchmark: `vlm3d convert-nuscenes` (release build) side by side with the `rosbags` Python
# library writing the same messages (scripts/bench_rosbags_write.py), on synthetic sets of two sizes.
# Usage: scripts/bench_convert.sh [SAMPLES=200,400] [WIDTH=1600] [HEIGHT=900]
# BUILD=release (default) builds with --release; BUILD=fast reuses the dev build's dependencies (already at
# opt-level 3) and compiles only vlm3d at opt-level 3 — much quicker where no release build exists yet.
set -euo pipefail
cd "$(dirname "$0")/.."
SAMPLES="${1:-200,400}"
WIDTH="${2:-1600}"
HEIGHT="${3:-900}"
VENV=.venv-peers/rosbags
if ! "$VENV/bin/python" -c 'import numpy, rosbags.rosbag2' 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check rosbags numpy
fi
if [ "${BUILD:-release}" = fast ]; then
  cargo build --no-default-features --bin vlm3d --config 'profile.dev.package.vlm3d.opt-level=3' \
    --config 'profile.dev.package.vlm3d.debug-assertions=false' --config 'profile.dev.package.vlm3d.overflow-checks=false'
  BIN=target/debug/vlm3d
else
  cargo build --release --no-default-features --bin vlm3d
  BIN=target/release/vlm3d
fi
# Bags go to a tmpfs when there is one: the benchmark times the converters, not the disk's writeback.
BAGS=target/bench-convert
if [ -d /dev/shm ] && [ -w /dev/shm ]; then BAGS=/dev/shm/vlm3d-bench-convert; fi
"$BIN" bench-convert --samples "$SAMPLES" --width "$WIDTH" --height "$HEIGHT" \
  --python "$VENV/bin/python" --script scripts/bench_rosbags_write.py --work target/bench-convert \
  --bag-dir "$BAGS" --repeat 3
