#!/usr/bin/env bash
# Fuzzes every target for a bounded time (not part of CI's budget), in the
# debug build the tests use (no second build):
#   fuzz/run.sh [seconds per target, default 120] [target ...]
# New outcomes are saved to fuzz/corpus/<target>/ (commit them: CI replays
# the corpus in every test run); crashes are saved there as crash-* and fail
# the run.
set -euo pipefail
cd "$(dirname "$0")/.."
source ../shared/v8/env.sh
seconds=${1:-120}
shift || true
# target name, crate, its unit tests, test name
all=(
  "ingress-http1 outpost-ingress --lib fuzz_http1_heads_and_bodies"
  "kv-list outpost-kv --lib fuzz_keys_prefixes_and_cursors"
  "module-specifiers outpost-runtime --lib fuzz_module_specifiers"
  "object-ids outpost-runtime --lib fuzz_durable_object_ids"
  "configs outpost-cli --bins fuzz_worker_and_node_configs"
)
for entry in "${all[@]}"; do
  read -r name crate kind test <<<"$entry"
  if [ $# -gt 0 ] && [[ ! " $* " == *" $name "* ]]; then continue; fi
  echo "== $name ($seconds s)"
  OUTPOST_FUZZ_SECONDS=$seconds OUTPOST_FUZZ_TARGET=$name \
    cargo test -p "$crate" "$kind" "$test" -- --nocapture 2>&1 | grep -E "^fuzz |panicked|FAILED" || true
done
