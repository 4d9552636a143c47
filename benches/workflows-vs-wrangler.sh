#!/usr/bin/env bash
# Workflows end to end, Outpost next to wrangler dev (miniflare's local
# Workflows engine, the only other way to run them off Cloudflare), in one
# run: the same worker (benches/workflows/worker.js) creates N instances
# through its binding and polls them until all are complete; the median of
# ROUNDS rounds, for the three-step workflow and for the same callbacks
# inline.
#
#   cargo build --release -p outpost-cli
#   npm install --prefix /tmp/wr wrangler@4      # once; WRANGLER_DIR=/tmp/wr
#   benches/workflows-vs-wrangler.sh [N] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100}
ROUNDS=${2:-5}
WRANGLER_DIR=${WRANGLER_DIR:-/tmp/wr}
OUTPOST=target/release/outpost
[ -x "$OUTPOST" ] || { echo "build it first: cargo build --release -p outpost-cli" >&2; exit 1; }

median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# rounds URL: the median milliseconds of ROUNDS GETs of URL (NaN if one failed).
rounds() {
  local times
  times=$(for _ in $(seq "$ROUNDS"); do curl -sf "$1" || echo NaN; echo; done)
  if grep -q NaN <<<"$times"; then echo NaN; else median <<<"$times"; fi
}

wait_up() {
  for _ in $(seq 200); do curl -s -o /dev/null "$1" && return 0; sleep 0.1; done
  echo "nothing answers at $1" >&2; return 1
}

data=$(mktemp -d)
groups=()
# Each server in a session of its own, so that its children (workerd) go too.
cleanup() {
  for group in "${groups[@]}"; do kill -- "-$group" 2>/dev/null || true; done
  rm -rf "$data"
}
trap cleanup EXIT
for port in 8798 8799; do
  if curl -s -o /dev/null "http://127.0.0.1:$port/"; then echo "port $port is taken" >&2; exit 1; fi
done
RUST_LOG=warn setsid "$OUTPOST" dev benches/workflows --port 8798 --data-dir "$data/outpost" >"$data/outpost.log" 2>&1 &
groups+=($!)
wait_up http://127.0.0.1:8798/
curl -sf "http://127.0.0.1:8798/run?wf=THREE&n=10" >/dev/null   # warm-up
outpost_three=$(rounds "http://127.0.0.1:8798/run?wf=THREE&n=$N")
outpost_inline=$(rounds "http://127.0.0.1:8798/run?wf=INLINE&n=$N")
kill -- "-${groups[0]}"

if [ -x "$WRANGLER_DIR/node_modules/.bin/wrangler" ]; then
  cp benches/workflows/worker.js benches/workflows/wrangler.toml "$data/"
  (cd "$data" && exec setsid "$WRANGLER_DIR/node_modules/.bin/wrangler" dev --port 8799 >"$data/wrangler.log" 2>&1) &
  groups+=($!)
  wait_up http://127.0.0.1:8799/
  curl -sf "http://127.0.0.1:8799/run?wf=THREE&n=10" >/dev/null
  wrangler_three=$(rounds "http://127.0.0.1:8799/run?wf=THREE&n=$N")
  wrangler_inline=$(rounds "http://127.0.0.1:8799/run?wf=INLINE&n=$N")
else
  echo "(no wrangler in $WRANGLER_DIR: only Outpost measured)" >&2
  wrangler_three=NaN wrangler_inline=NaN
fi

printf '%s instances, median of %s rounds (ms until all complete; instances/s)\n' "$N" "$ROUNDS"
printf '%-22s %18s %18s\n' "" "outpost dev" "wrangler dev"
for row in "3 steps:three" "inline:inline"; do
  label=${row%%:*} key=${row##*:}
  o=$(eval echo "\$outpost_$key") w=$(eval echo "\$wrangler_$key")
  printf '%-22s %9s ms %5.0f/s %9s ms %5.0f/s\n' "$label" "$o" "$(echo "$N*1000/$o" | bc -l)" "$w" \
    "$(echo "$N*1000/$w" | bc -l 2>/dev/null || echo 0)"
done
