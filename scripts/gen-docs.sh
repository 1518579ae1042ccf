#!/usr/bin/env bash
# gen-docs.sh — regenerate the option table in docs/CONFIG.md from the
# option table compiled into dpep (tests/test_cli.sh checks it is current).
#   scripts/gen-docs.sh [path/to/dpep]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dpep=${1:-$root/build/dpep}
doc=$root/docs/CONFIG.md
table=$("$dpep" config options --markdown)
awk -v table="$table" '
  /<!-- options:begin -->/ { print; print table; skip = 1; next }
  /<!-- options:end -->/   { skip = 0 }
  !skip { print }' "$doc" > "$doc.tmp"
mv "$doc.tmp" "$doc"
echo "updated $doc"
