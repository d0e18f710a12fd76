#!/usr/bin/env bash
# Local benchmark over all sources: tokenledger (cold and warm) versus ccusage 20.0.24 on one
# generated corpus of Codex, Claude Code, Every Code, Gemini CLI, OpenCode and Qwen Code logs.
# run.sh stays the Codex/Claude benchmark; this script adds the other agents (tokenledger-corpus
# --agents all) and runs ccusage once per agent it supports (claude, codex, gemini, opencode,
# qwen; it has no Every Code command).
#
#   bench/local/run-all-agents.sh                                   # 1 GiB + 256 MiB of agents
#   BENCH_BYTES=200MiB BENCH_FILES=8000 BENCH_AGENT_BYTES=64MiB bench/local/run-all-agents.sh
#
# Goals as in run.sh: cold >= 3x faster than ccusage (sum over its per-agent runs), warm >= 50x
# reading no log bytes (the OpenCode database gets only its cheap change check: a few pages),
# peak memory <= 1/4.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BYTES="${BENCH_BYTES:-1GiB}"
FILES="${BENCH_FILES:-42000}"
AGENT_BYTES="${BENCH_AGENT_BYTES:-256MiB}"
AGENT_SESSIONS="${BENCH_AGENT_SESSIONS:-200}"
SEED="${BENCH_SEED:-1}"
CACHE="${BENCH_DIR:-$HOME/.cache/tokenledger-bench}"
CORPUS="$CACHE/corpus-all-$SEED-$BYTES-$FILES-$AGENT_BYTES"
HOME_DIR="$CORPUS/home"
OUT="$ROOT/bench/out/all-agents"
# shellcheck source=bench/local/common.sh
. "$ROOT/bench/local/common.sh"

if [ ! -f "$CORPUS/.complete" ]; then
  echo "== generating corpus in $CORPUS ($BYTES Codex/Claude + $AGENT_BYTES other agents)" >&2
  rm -rf "$CORPUS"; mkdir -p "$CORPUS"
  "$GEN" --out "$HOME_DIR" --seed "$SEED" --files "$FILES" --bytes "$BYTES" \
    --agents all --agent-sessions "$AGENT_SESSIONS" --agent-bytes "$AGENT_BYTES" \
    --truth "$CORPUS/truth.json"
  touch "$CORPUS/.complete"
fi
NFILES=$(find "$HOME_DIR" -type f | wc -l)
NBYTES=$(du -sb "$HOME_DIR" | cut -f1)

run_env=(env -i PATH="$PATH" HOME="$HOME_DIR" NO_COLOR=1 TZ=UTC)

rm -f "$OUT/measure.txt"
LEDGER="$(mktemp -d "$CACHE/ledger.XXXXXX")"
echo "== corpus: $NFILES files, $NBYTES bytes; machine: $(nproc) cores" >&2
find "$HOME_DIR" -type f -exec cat {} + >/dev/null

for round in $(seq "$RUNS"); do
  echo "== round $round of $RUNS" >&2
  for agent in claude codex gemini opencode qwen; do
    measure "ccusage-$agent" "${run_env[@]}" "${CC[@]}" "$agent" daily --offline
  done
  rm -rf "$LEDGER" && mkdir -p "$LEDGER"
  measure tokenledger-cold "${run_env[@]}" TOKENLEDGER_HOME="$LEDGER" "$TL" report daily
  measure tokenledger-warm "${run_env[@]}" TOKENLEDGER_HOME="$LEDGER" "$TL" report daily
done

strace -f -y -qq -e trace=read,pread64,readv,preadv,openat -o "$OUT/strace-warm.txt" \
  "${run_env[@]}" TOKENLEDGER_HOME="$LEDGER" "$TL" report daily >/dev/null 2>&1
# Bytes read from log files, and separately from the OpenCode database (its change check).
WARM_READ=$(awk -v home="$HOME_DIR" 'index($0, home) && !/opencode\.db/ && /(^|[ ])(read|pread64|readv|preadv)\(/ { n=$NF; if (n ~ /^[0-9]+$/) s+=n } END { print s+0 }' "$OUT/strace-warm.txt")
WARM_DB=$(awk 'index($0, "opencode.db") && /(^|[ ])(read|pread64|readv|preadv)\(/ { n=$NF; if (n ~ /^[0-9]+$/) s+=n } END { print s+0 }' "$OUT/strace-warm.txt")
DB_SIZE=$(stat -c %s "$HOME_DIR/.local/share/opencode/opencode.db")

"${run_env[@]}" TOKENLEDGER_HOME="$LEDGER" "$TL" report daily --json --breakdown --timezone UTC > "$OUT/tokenledger.json"
EXACT=$(python3 - "$OUT/tokenledger.json" "$CORPUS/truth.json" <<'PY'
import json, sys
a = json.load(open(sys.argv[1])); t = json.load(open(sys.argv[2]))
f = ["input_tokens","cached_input_tokens","cache_creation_input_tokens","output_tokens","reasoning_output_tokens","total_tokens"]
act = {}
for r in a["rows"]:
    for b in r["breakdown"]:
        v = tuple(b[k] for k in f)
        if any(v): act[(r["period"], b["source"], b["model"])] = v
exp = {(d["day"], d["source"], d["model"]): tuple(d[k] for k in f) for d in t["daily"]}
bad = [k for k in set(act) | set(exp) if act.get(k) != exp.get(k)]
print(f"yes ({len(exp)} day/source/model rows)" if not bad else f"NO: {len(bad)} rows differ, e.g. {sorted(bad)[:3]}")
PY
)
rm -rf "$LEDGER"

python3 -c "$read_measures_py
exec(open('/dev/stdin').read())" "$OUT/measure.txt" "$NFILES" "$NBYTES" "$WARM_READ" "$WARM_DB" "$DB_SIZE" "$EXACT" <<'PY' | tee "$OUT/summary.txt"
import sys
m, rounds = read_measures(sys.argv[1])
print(f"medians of {rounds} interleaved rounds")
files, size, warm_read, warm_db, db_size, exact = sys.argv[2:8]
ccs = [k for k in m if k.startswith("ccusage-")]
cc_wall = sum(m[k][0] for k in ccs); cc_rss = max(m[k][1] for k in ccs)
cold, warm = m["tokenledger-cold"], m["tokenledger-warm"]
tl_rss = max(cold[1], warm[1])
mib = lambda kb: kb / 1024
print(f"corpus: {int(files):,} files, {int(size)/2**20:.0f} MiB (OpenCode database {int(db_size)/2**20:.1f} MiB)")
print(f"{'':26}{'wall':>9}{'peak RSS':>13}")
for k in ccs:
    print(f"{k:26}{m[k][0]:8.2f}s{mib(m[k][1]):10.1f} MiB")
print(f"{'ccusage, all five':26}{cc_wall:8.2f}s{mib(cc_rss):10.1f} MiB")
print(f"{'tokenledger cold':26}{cold[0]:8.2f}s{mib(cold[1]):10.1f} MiB")
print(f"{'tokenledger warm':26}{warm[0]:8.2f}s{mib(warm[1]):10.1f} MiB")
g = lambda ok: "ok" if ok else "MISSED"
cs, ws, mr = cc_wall / max(cold[0], 1e-3), cc_wall / max(warm[0], 1e-3), tl_rss / cc_rss
print(f"cold speedup vs ccusage: {cs:.1f}x (goal >= 3x: {g(cs >= 3)})")
print(f"warm speedup vs ccusage: {ws:.1f}x (goal >= 50x: {g(ws >= 50)})")
print(f"warm run log bytes read: {int(warm_read):,} (goal 0: {g(int(warm_read) == 0)}); OpenCode database change check: {int(warm_db):,} bytes")
print(f"peak memory vs ccusage:  {mr:.3f} (goal <= 0.25: {g(mr <= 0.25)})")
print(f"tokenledger equals the ground truth per day, source and model: {exact}")
PY
