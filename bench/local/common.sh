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

# Every measured run that reads the logs, of every contender, starts with the corpus and the
# contenders' own programs (tokenledger; node and the ccusage package with its native binary)
# in the page cache. This machine's kernel drops file pages left idle for a few seconds even with memory
# free (of a corpus read 20 s earlier, ~13 MB in 735 files had to be read from disk again), and
# that fell unevenly: a run found in memory what the runs just before it had read, and waited
# on the disk for the rest (a first scan 6 s after a full read of the corpus took 1.04-1.11 s
# against 0.97-1.01 s right after one; `ccusage opencode` 3 s after its last run took
# 0.38-0.42 s against 0.22 s right after it, as node's own pages went).
warm_corpus() {
  local node ccdir
  node="$(command -v node || true)"
  # The whole node_modules folder of an npm install; a native binary given directly, alone.
  case "$CCJS" in *.js) ccdir="$(dirname "$(dirname "$(dirname "$CCJS")")")" ;; *) ccdir="$CCJS" ;; esac
  {
    if [ -n "${HOME_DIR:-}" ]; then find "$HOME_DIR" -type f -print0; fi
    find "$TL" "$ccdir" -type f -print0 2>/dev/null
    if [ -n "$node" ]; then printf '%s\0' "$(readlink -f "$node")"; fi
  } | xargs -0 cat >/dev/null 2>&1 || true
}

# measure NAME CMD... -> appends "NAME wall_seconds max_rss_kb" to $OUT/measure.txt. The
# wall time and peak RSS come from tokenledger-measure (crates/testkit), which spawns the
# command, reaps it and reads the clock and the kernel's ru_maxrss around nothing else: timing
# `/usr/bin/time` between two `date` calls counted three more process starts (~3-5 ms) in every
# run, a tenth of a 60 ms one.
measure() {
  local name="$1"; shift
  local log="$OUT/time-$name.txt"
  # A run that reads no log bytes (tokenledger's with nothing new) follows the first run
  # directly, as a user's next run would: reading the corpus just before it would only evict
  # what it does use (the CPU caches' share of the kernel's file metadata).
  case "$name" in *-warm) ;; *) warm_corpus ;; esac
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
