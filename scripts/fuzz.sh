#!/usr/bin/env bash
# Runs every cargo-fuzz target under fuzz/fuzz_targets for N seconds each (default 60).
#
#   scripts/fuzz.sh            # every target, 60 s each
#   scripts/fuzz.sh 600 codex  # one target, 10 minutes
#
# cargo-fuzz needs nightly-only rustc flags (-Zsanitizer=address); RUSTC_BOOTSTRAP=1 lets the
# stable toolchain accept them, so no nightly install is needed. Crashes land in
# fuzz/artifacts/<target>/ and the growing corpus in fuzz/corpus/<target>/ (both git-ignored).
set -euo pipefail
SECS="${1:-60}"
shift || true
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/tokenledger-fuzz-target}"
if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
fi
for t in "${targets[@]}"; do
  echo "== fuzzing $t for ${SECS}s" >&2
  cargo fuzz run "$t" --fuzz-dir fuzz -- -max_total_time="$SECS" -print_final_stats=1
done
echo "all ${#targets[@]} targets ran ${SECS}s each without a crash" >&2
