#!/usr/bin/env bash
# The whole test suite: installs what the protocol tests need (tansu, kcat,
# Python and Node clients) into the cache when missing, then runs the unit
# tests and the protocol tests against real brokers and real clients.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/deps.sh
# shellcheck disable=SC1091
source "${KLINK_CACHE:-$HOME/.cache/klink}/env.sh"

# The micro benchmarks run once each as smoke tests (their fixtures must
# still parse), then the unit and protocol tests, whose summary ends the run.
cargo test --locked --benches "$@"
cargo test --locked --lib --bins --tests "$@"
# A few seconds of every fuzz target, from the seeds and the corpus so far:
# a decoder that now crashes on them fails here (scripts/fuzz.sh runs longer).
scripts/fuzz.sh 3
