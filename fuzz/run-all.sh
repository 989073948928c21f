#!/bin/sh
# Runs every fuzz target in turn, one process at a time, for SECONDS each (default 300).
# Usage: fuzz/run-all.sh [SECONDS] [extra libFuzzer flags...]
# New corpus entries go to fuzz/corpus/<target>/, crashes to fuzz/artifacts/<target>/.
set -u
cd "$(dirname "$0")"
seconds="${1:-300}"
[ $# -gt 0 ] && shift
failed=""
for t in $(cargo +nightly fuzz list); do
    mkdir -p "corpus/$t"
    echo "== $t: ${seconds}s"
    cargo +nightly fuzz run "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$seconds" -timeout=10 -dict=dicts/json.dict -print_final_stats=1 "$@" \
        || failed="$failed $t"
done
if [ -n "$failed" ]; then
    echo "crashed:$failed (see fuzz/artifacts/)"
    exit 1
fi
