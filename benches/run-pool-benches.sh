#!/usr/bin/env bash
# Runs the pool benchmarks in both snapshot modes (one process each: V8
# allows one snapshot blob per process) and prints criterion's estimates.
set -euo pipefail
cd "$(dirname "$0")/.."
source ../shared/v8/env.sh 2>/dev/null || true
for mode in worker bootstrap; do
  echo "== isolates from the ${mode} snapshot"
  OUTPOST_BENCH_SNAPSHOT=$mode cargo bench -p outpost-benches --bench pool -- "$@"
done
