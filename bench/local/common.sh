# Shared by run.sh and run-all-agents.sh (sourced, not run): tools, the release build, ccusage,
# and `measure`. Expects ROOT, CACHE and OUT to be set; sets TL, GEN and CC.

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tokenledger-target}"
mkdir -p "$OUT" "$CACHE"

need() { command -v "$1" >/dev/null 2>&1; }
need strace || { (apt-get install -y strace || (apt-get update && apt-get install -y strace)) >/dev/null; }

echo "== building (release)" >&2
(cd "$ROOT" && cargo build --release -q -p tokenledger -p tokenledger-testkit)
TL="$CARGO_TARGET_DIR/release/tokenledger"
GEN="$CARGO_TARGET_DIR/release/tokenledger-corpus"
MEASURE="$CARGO_TARGET_DIR/release/tokenledger-measure"

CCJS="${TOKENLEDGER_CCUSAGE:-$HOME/.cache/tokenledger-ccusage/node_modules/ccusage/src/cli.js}"
if [ ! -f "$CCJS" ]; then
  echo "== installing ccusage" >&2
  "$ROOT/scripts/install-ccusage.sh" >&2
fi
case "$CCJS" in *.js) CC=(node "$CCJS") ;; *) CC=("$CCJS") ;; esac

# Rounds of measurements: each contender runs once per round, rounds interleave so that drift on
# a shared machine falls on all of them alike; the summary takes medians.
RUNS="${BENCH_RUNS:-3}"

# measure NAME CMD... -> appends "NAME wall_seconds max_rss_kb" to $OUT/measure.txt. The
# wall time and peak RSS come from tokenledger-measure (crates/testkit), which spawns the
# command, reaps it and reads the clock and the kernel's ru_maxrss around nothing else: timing
# `/usr/bin/time` between two `date` calls counted three more process starts (~3-5 ms) in every
# run, a tenth of a 60 ms one.
measure() {
  local name="$1"; shift
  local log="$OUT/time-$name.txt"
  "$MEASURE" --out "$log" -- "$@" >"$OUT/stdout-$name.txt" 2>"$OUT/stderr-$name.txt" || {
    echo "$name failed; see $OUT/stderr-$name.txt" >&2; cat "$OUT/stderr-$name.txt" >&2; exit 1; }
  local wall rss code
  read -r wall rss code < "$log"
  echo "$name $wall $rss" >> "$OUT/measure.txt"
  printf '%-22s %8.3f s %10.1f MiB\n' "$name" "$wall" "$(echo "$rss/1024" | bc -l)" >&2
}

# The summary's reading of measure.txt (Python, shared by both benchmarks): per contender the
# median wall time and the peak RSS (tokenledger: the highest of its runs; ccusage: the median).
read_measures_py='
import statistics
def read_measures(path):
    runs = {}
    for line in open(path):
        n, w, r = line.split()
        runs.setdefault(n, []).append((float(w), int(r)))
    m = {}
    for n, v in runs.items():
        rss = [r for _, r in v]
        peak = max(rss) if n.startswith("tokenledger") else statistics.median(rss)
        m[n] = (statistics.median(w for w, _ in v), peak)
    return m, max(len(v) for v in runs.values())
'
