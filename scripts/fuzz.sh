#!/usr/bin/env bash
# Runs klink's fuzz targets (fuzz/fuzz_targets) under libFuzzer.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]   each target for SECONDS (default 10);
#                                           every target when none is named
#
# Built on the stable toolchain with libfuzzer-sys and the coverage flags
# cargo-fuzz would pass (no cargo-fuzz, no nightly: no AddressSanitizer,
# but debug assertions and overflow checks are on and klink has no unsafe
# code of its own). Seeds come from fixtures/ (fuzz/seeds.py); the corpus
# grows in fuzz/corpus/TARGET and a crashing, hanging or memory-hungry input
# lands in fuzz/artifacts/TARGET and fails the run. Prints, per target, the
# executions and seconds libFuzzer reported. scripts/test.sh runs a short
# pass of every target so a regression that crashes on the seeds fails CI.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SECONDS_EACH="${1:-10}"
shift || true
ALL=(frames requests responses batches texts)
TARGETS=("${@:-${ALL[@]}}")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=("${ALL[@]}")

cd "$ROOT/fuzz"
python3 seeds.py
HOST="$(rustc -vV | sed -n 's/^host: //p')"
# The target triple keeps these flags off build scripts and proc macros.
RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares" \
    cargo build --release --target "$HOST" --bins >&2

status=0
for target in "${TARGETS[@]}"; do
    mkdir -p "corpus/$target" "artifacts/$target"
    log="$(mktemp)"
    if "target/$HOST/release/$target" "corpus/$target" "seeds/$target" \
        -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
        -print_final_stats=1 -artifact_prefix="artifacts/$target/" >"$log" 2>&1; then
        runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
        secs="$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)"
        echo "fuzz $target: ${runs:-?} executions in ${secs:-$SECONDS_EACH} s, no crash, hang or OOM"
    else
        status=1
        echo "fuzz $target: FAILED (input in fuzz/artifacts/$target/):"
        grep -E "ERROR|panicked|SUMMARY|Test unit written" "$log" | head -20
    fi
    rm -f "$log"
done
exit "$status"
