#!/usr/bin/env bash
# Installs ccusage 20.0.24 (the comparison baseline of crates/cli/tests/ccusage.rs and
# bench/local/run.sh) into ~/.cache/tokenledger-ccusage. 20.0.24 because the linux binary of
# 20.0.26 is missing from the registry.
set -euo pipefail
VERSION="${CCUSAGE_VERSION:-20.0.24}"
DIR="${TOKENLEDGER_CCUSAGE_DIR:-$HOME/.cache/tokenledger-ccusage}"
mkdir -p "$DIR"
cd "$DIR"
[ -f package.json ] || echo '{"private":true}' > package.json
npm install --no-audit --no-fund --loglevel=error "ccusage@$VERSION"
# The wrapper chmods the native binary on first use; do it now so it can be run directly too.
for bin in node_modules/@ccusage/ccusage-*/bin/ccusage; do
  [ -f "$bin" ] && chmod +x "$bin"
done
node node_modules/ccusage/src/cli.js --version
echo "ccusage installed: node $DIR/node_modules/ccusage/src/cli.js"
