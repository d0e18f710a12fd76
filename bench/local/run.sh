#!/usr/bin/env bash
# Local benchmark: tokenledger (cold and warm) versus ccusage 20.0.24 on one generated corpus of
# Codex CLI and Claude Code logs (>= 1 GiB in >= 40,000 files by default), in one run.
#
#   bench/local/run.sh                 # 1 GiB, 42,000 files
#   BENCH_BYTES=200MiB BENCH_FILES=8000 bench/local/run.sh   # a quicker look
#
# Measures wall time and peak RSS with tokenledger-measure (see common.sh), and the log bytes
# the warm run reads with strace (read/pread on files under the corpus). Prints ratios against the goals:
# cold >= 3x faster than ccusage, warm >= 50x faster reading no log bytes, peak memory <= 1/4.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BYTES="${BENCH_BYTES:-1GiB}"
FILES="${BENCH_FILES:-42000}"
SEED="${BENCH_SEED:-1}"
CACHE="${BENCH_DIR:-$HOME/.cache/tokenledger-bench}"
CORPUS="$CACHE/corpus-$SEED-$BYTES-$FILES"
HOME_DIR="$CORPUS/home"
OUT="$ROOT/bench/out"
# shellcheck source=bench/local/common.sh
. "$ROOT/bench/local/common.sh"

if [ ! -f "$CORPUS/.complete" ]; then
  echo "== generating corpus in $CORPUS ($BYTES, >= $FILES files)" >&2
  rm -rf "$CORPUS"
  mkdir -p "$CORPUS"
  "$GEN" --out "$HOME_DIR" --seed "$SEED" --files "$FILES" --bytes "$BYTES" --truth "$CORPUS/truth.json"
  touch "$CORPUS/.complete"
fi
NFILES=$(find "$HOME_DIR" -type f | wc -l)
NBYTES=$(du -sb "$HOME_DIR" | cut -f1)

# Clean environment: the corpus is the only HOME, no agent overrides.
run_env=(env -u CODEX_HOME -u CLAUDE_CONFIG_DIR -u XDG_CONFIG_HOME -u XDG_DATA_HOME HOME="$HOME_DIR" NO_COLOR=1 TZ=UTC)

rm -f "$OUT/measure.txt"
LEDGER="$(mktemp -d "$CACHE/ledger.XXXXXX")"
echo "== corpus: $NFILES files, $NBYTES bytes; machine: $(nproc) cores" >&2
# Warm the page cache once so that every contender reads from memory.
find "$HOME_DIR" -type f -exec cat {} + >/dev/null

for round in $(seq "$RUNS"); do
  echo "== round $round of $RUNS" >&2
  measure ccusage-claude "${run_env[@]}" "${CC[@]}" claude daily --offline
  measure ccusage-codex "${run_env[@]}" "${CC[@]}" codex daily --offline
  rm -rf "$LEDGER" && mkdir -p "$LEDGER"
  measure tokenledger-cold "${run_env[@]}" TOKENLEDGER_HOME="$LEDGER" "$TL" report daily
  measure tokenledger-warm "${run_env[@]}" TOKENLEDGER_HOME="$LEDGER" "$TL" report daily
done

# Log bytes read by a warm run: read/pread calls on files under the corpus.
strace -f -y -qq -e trace=read,pread64,readv,preadv,openat -o "$OUT/strace-warm.txt" \
  "${run_env[@]}" TOKENLEDGER_HOME="$LEDGER" "$TL" report daily >/dev/null 2>&1
WARM_READ=$(awk -v home="$HOME_DIR" 'index($0, home) && /(^|[ ])(read|pread64|readv|preadv)\(/ { n=$NF; if (n ~ /^[0-9]+$/) s+=n } END { print s+0 }' "$OUT/strace-warm.txt")
WARM_OPEN=$(awk -v home="$HOME_DIR" 'index($0, home) && /openat\(/ && !/= -1/ && /O_RDONLY/ && !/O_DIRECTORY/' "$OUT/strace-warm.txt" | wc -l)

# Exactness: tokenledger's totals against the ground truth.
"${run_env[@]}" TOKENLEDGER_HOME="$LEDGER" "$TL" report daily --json --breakdown --timezone UTC > "$OUT/tokenledger.json"
EXACT=$(python3 - "$OUT/tokenledger.json" "$CORPUS/truth.json" <<'PY'
import json, sys
a = json.load(open(sys.argv[1]))["totals"]; t = json.load(open(sys.argv[2]))["totals"]
f = ["input_tokens","cached_input_tokens","cache_creation_input_tokens","output_tokens","reasoning_output_tokens","total_tokens"]
print("yes" if all(a[k] == t[k] for k in f) else "NO: " + str({k: (a[k], t[k]) for k in f if a[k] != t[k]}))
PY
)
rm -rf "$LEDGER"

python3 -c "$read_measures_py
exec(open('/dev/stdin').read())" "$OUT/measure.txt" "$NFILES" "$NBYTES" "$WARM_READ" "$WARM_OPEN" "$EXACT" <<'PY' | tee "$OUT/summary.txt"
import sys
m, rounds = read_measures(sys.argv[1])
print(f"medians of {rounds} interleaved rounds")
files, size, warm_read, warm_open, exact = sys.argv[2:7]
cc_wall = m["ccusage-claude"][0] + m["ccusage-codex"][0]
cc_rss = max(m["ccusage-claude"][1], m["ccusage-codex"][1])
cold, warm = m["tokenledger-cold"], m["tokenledger-warm"]
tl_rss = max(cold[1], warm[1])
mib = lambda kb: kb / 1024
print(f"corpus: {int(files):,} files, {int(size)/2**30:.2f} GiB")
print(f"{'':24}{'wall':>9}{'peak RSS':>13}")
print(f"{'ccusage claude+codex':24}{cc_wall:8.2f}s{mib(cc_rss):10.1f} MiB")
print(f"{'tokenledger cold':24}{cold[0]:8.2f}s{mib(cold[1]):10.1f} MiB")
print(f"{'tokenledger warm':24}{warm[0]:8.2f}s{mib(warm[1]):10.1f} MiB")
g = lambda ok: "ok" if ok else "MISSED"
cs, ws, mr = cc_wall / max(cold[0], 1e-3), cc_wall / max(warm[0], 1e-3), tl_rss / cc_rss
print(f"cold speedup vs ccusage: {cs:.1f}x (goal >= 3x: {g(cs >= 3)})")
print(f"warm speedup vs ccusage: {ws:.1f}x (goal >= 50x: {g(ws >= 50)})")
print(f"warm run log bytes read: {int(warm_read):,} in {warm_open} opened log files (goal 0: {g(int(warm_read) == 0)})")
print(f"peak memory vs ccusage:  {mr:.3f} (goal <= 0.25: {g(mr <= 0.25)})")
print(f"tokenledger totals equal the ground truth: {exact}")
PY
