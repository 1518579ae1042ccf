#!/usr/bin/env bash
# show-skips.sh — print why each skipped CTest test skipped (the "SKIP: …"
# line it printed), so that a skip is never silent in a CI log.
#   scripts/show-skips.sh [BUILD_DIR]
log=${1:-build}/Testing/Temporary/LastTest.log
[ -f "$log" ] || exit 0
awk '/^[0-9]+\/[0-9]+ Test: /{name=$3} /^SKIP: /{print "skipped " name ": " substr($0, 7)}' "$log" | sort -u
