#!/usr/bin/env bash
# The built-in demo through the real node: builds the binaries (debug) and runs `vlm3d demo`, which starts
# perception_node with the demo model, plays the synthetic bag into it, records what it publishes and writes
# out/demo/ (demo.png, summary.json, summary.md, recording/, node.log).
#
#   bash scripts/setup.sh && bash scripts/demo.sh [--rate 0.5] [--samples 10] [--model DIR] [--out DIR] [--offline]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f env.sh ]; then
    # shellcheck disable=SC1091
    source env.sh
else
    echo "demo.sh: no env.sh; run bash scripts/setup.sh first" >&2
    exit 1
fi
cargo build --bins
exec target/debug/vlm3d demo "$@"
