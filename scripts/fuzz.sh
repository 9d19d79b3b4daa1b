#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets/) for a bounded time and fails on a crash.
#   FUZZ_SECONDS=20 (per target)   FUZZ_TARGETS="request_head chunked" (default: all)
# Needs cargo-fuzz (installed when missing). It builds with nightly-only flags (sanitizers,
# coverage), which the stable toolchain accepts with RUSTC_BOOTSTRAP=1. Build output is kept
# under ~/.cargo so a second run only rebuilds what changed. See docs/fuzzing.md.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
seconds=${FUZZ_SECONDS:-20}
target_dir=${FUZZ_TARGET_DIR:-$HOME/.cargo/outrigger-fuzz-target}
targets=${FUZZ_TARGETS:-$(cargo fuzz list)}

cargo fuzz build -O --target-dir "$target_dir"
for target in $targets; do
    # New inputs go to a scratch corpus; the committed seeds and regressions are only read.
    scratch=$(mktemp -d)
    corpora=("$scratch" "fuzz/seeds/$target")
    [ -d "fuzz/regressions/$target" ] && corpora+=("fuzz/regressions/$target")
    echo "== fuzz $target for ${seconds}s"
    log=$(mktemp)
    if ! cargo fuzz run -O --target-dir "$target_dir" "$target" "${corpora[@]}" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log"
        echo "fuzz target $target failed; the input is under fuzz/artifacts/$target/" >&2
        exit 1
    fi
    grep -E "^Done|stat::number_of_executed_units|stat::peak_rss_mb" "$log" || true
    rm -rf "$scratch" "$log"
done
