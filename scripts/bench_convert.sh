#!/usr/bin/env bash
# Conversion benchmark: `vlm3d convert-nuscenes` (release build) side by side with the `rosbags` Python
# library writing the same messages (scripts/bench_rosbags_write.py), on synthetic sets of two sizes.
# Usage: scripts/bench_convert.sh [SAMPLES=200,400] [WIDTH=1600] [HEIGHT=900]
set -euo pipefail
cd "$(dirname "$0")/.."
SAMPLES="${1:-200,400}"
WIDTH="${2:-1600}"
HEIGHT="${3:-900}"
VENV=target/peer-venv-rosbags
if ! "$VENV/bin/python" -c 'import rosbags.rosbag2' 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check rosbags
fi
cargo build --release --no-default-features --bin vlm3d
target/release/vlm3d bench-convert --samples "$SAMPLES" --width "$WIDTH" --height "$HEIGHT" \
  --python "$VENV/bin/python" --script scripts/bench_rosbags_write.py --work target/bench-convert
