#!/usr/bin/env bash
# make bench / make bench-quick: builds the release binaries, then runs syncnode-bench, which
# prints a Markdown table and writes target/bench/results.md and target/bench/sync.png.
# Usage: scripts/bench.sh [--quick] [more syncnode-bench flags]
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO="${CARGO:-cargo}"
"$CARGO" build --release -p syncnode -p syncnode-bench
load=$(cut -d' ' -f1 /proc/loadavg)
echo "load average before the run: $load (figures are noisy above 0.5)" >&2
exec ./target/release/syncnode-bench --bin target/release/syncnode --out target/bench "$@"
