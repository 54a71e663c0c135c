#!/usr/bin/env bash
# End-to-end latency of `serve` (POST → the handler's completion, read from the `outcome` log line's
# timestamp) at a fixed offered rate, then a saturation run with offered rates stepping up. Prints Markdown.
#
#   bench/latency.sh                              # 1,000/s for 15 s, then 1k,2k,...,8k/s, 5 s each
#   bench/latency.sh --rate 2000 --duration 30
#   bench/latency.sh --steps 4000,5000,6000 --step-secs 10 --pollers 8 --all-steps
#
# Options go to examples/latency_probe.rs (`--help` lists them). The probe, the server and its SQLite
# commits share the machine's cores. Nothing here is a timed test; the figures depend on the machine.
set -euo pipefail
cd "$(dirname "$0")/.."

# The probe starts `serve` itself and stops it (SIGTERM, then SIGKILL) when it ends; this trap covers an
# interrupted run of the probe.
PROBE_PID=""
SCRATCH=$(mktemp -d -t latency_probe.XXXXXX)
cleanup() {
  stop_driver
  rm -rf "$SCRATCH"
}
stop_driver() {
  [[ -n "$PROBE_PID" ]] || return 0
  local children
  children=$(ps -o pid= --ppid "$PROBE_PID" 2>/dev/null || true)
  kill -TERM "$PROBE_PID" 2>/dev/null || true
  for pid in $children; do kill -TERM "$pid" 2>/dev/null || true; done
  wait "$PROBE_PID" 2>/dev/null || true
  for pid in $children; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "building the release binary and the probe..." >&2
cargo build --release --quiet --bin intercom-webhooks
cargo build --release --quiet --example latency_probe
# A fresh build leaves hundreds of MB of dirty pages; their write-back makes every fsync slow for a while.
sync

target/release/examples/latency_probe --bin target/release/intercom-webhooks --dir "$SCRATCH" "$@" &
PROBE_PID=$!
wait "$PROBE_PID"
PROBE_PID=""
