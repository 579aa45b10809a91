#!/usr/bin/env bash
# `make fuzz`: runs every fuzz target for FUZZ_SECONDS (default 600) each, one after another, on
# stable Rust (see README.md here for why RUSTC_BOOTSTRAP). Installs cargo-fuzz if absent.
#   FUZZ_SECONDS=60 FUZZ_TARGETS="frame message" make fuzz
# Each target starts from its committed seeds (seeds/T) and grows corpus/T (not committed). A crash
# stops the run with a non-zero status; the input is in artifacts/T/. Logs: target/logs/T.log.
set -euo pipefail
cd "$(dirname "$0")"
CARGO=${CARGO:-cargo}
FUZZ_SECONDS=${FUZZ_SECONDS:-600}
FUZZ_TARGETS=${FUZZ_TARGETS:-frame message validity}

if ! $CARGO fuzz --version >/dev/null 2>&1; then
  $CARGO install --locked cargo-fuzz
fi

# cargo-fuzz passes nightly-only flags (-Zsanitizer, sancov passes); stable rustc accepts them
# under RUSTC_BOOTSTRAP=1. Use AddressSanitizer when the toolchain ships its runtime.
export RUSTC_BOOTSTRAP=1
sysroot=$(rustc --print sysroot)
host=$(rustc -vV | sed -n 's/^host: //p')
if compgen -G "$sysroot/lib/rustlib/$host/lib/librustc-*_rt.asan.a" >/dev/null; then
  sanitizer=address
else
  sanitizer=none
fi

mkdir -p target/logs
for t in $FUZZ_TARGETS; do
  mkdir -p "corpus/$t"
  log="target/logs/$t.log"
  echo "== fuzz $t for ${FUZZ_SECONDS}s (sanitizer: $sanitizer), log $log"
  # One job, low priority: the machine is shared with builds. A single allocation over 8 MiB
  # (half the response frame limit) is a failure: nothing here may size a buffer from a length.
  status=0
  nice -n 10 $CARGO fuzz run --sanitizer "$sanitizer" "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$FUZZ_SECONDS" -timeout=10 -malloc_limit_mb=8 -rss_limit_mb=2048 \
    -print_final_stats=1 >"$log" 2>&1 || status=$?
  grep -E '^#[0-9]+' "$log" | tail -n 1 || true
  grep -E '^Done|stat::number_of_executed_units|stat::peak_rss_mb' "$log" || true
  if [[ $status -ne 0 ]]; then
    tail -n 60 "$log"
    echo "fuzz target $t failed (status $status); see $log and artifacts/$t/" >&2
    exit "$status"
  fi
done
