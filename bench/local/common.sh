# Shared by run.sh and run-all-agents.sh (sourced, not run): tools, the release build, ccusage,
# and `measure`. Expects ROOT, CACHE and OUT to be set; sets TL, GEN and CC.

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tokenledger-target}"
mkdir -p "$OUT" "$CACHE"

need() { command -v "$1" >/dev/null 2>&1; }
if [ ! -x /usr/bin/time ]; then
  echo "installing GNU time" >&2
  (apt-get install -y time || (apt-get update && apt-get install -y time)) >/dev/null
fi
need strace || { (apt-get install -y strace || (apt-get update && apt-get install -y strace)) >/dev/null; }

echo "== building (release)" >&2
(cd "$ROOT" && cargo build --release -q -p tokenledger -p tokenledger-testkit)
TL="$CARGO_TARGET_DIR/release/tokenledger"
GEN="$CARGO_TARGET_DIR/release/tokenledger-corpus"

CCJS="${TOKENLEDGER_CCUSAGE:-$HOME/.cache/tokenledger-ccusage/node_modules/ccusage/src/cli.js}"
if [ ! -f "$CCJS" ]; then
  echo "== installing ccusage" >&2
  "$ROOT/scripts/install-ccusage.sh" >&2
fi
case "$CCJS" in *.js) CC=(node "$CCJS") ;; *) CC=("$CCJS") ;; esac

# measure NAME CMD... -> appends "NAME wall_seconds max_rss_kb" to $OUT/measure.txt
measure() {
  local name="$1"; shift
  local log="$OUT/time-$name.txt"
  /usr/bin/time -v -o "$log" "$@" >"$OUT/stdout-$name.txt" 2>"$OUT/stderr-$name.txt" || {
    echo "$name failed; see $OUT/stderr-$name.txt" >&2; cat "$OUT/stderr-$name.txt" >&2; exit 1; }
  local wall rss
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$log" | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }')
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$log")
  echo "$name $wall $rss" >> "$OUT/measure.txt"
  printf '%-22s %8.2f s %10.1f MiB\n' "$name" "$wall" "$(echo "$rss/1024" | bc -l)" >&2
}
