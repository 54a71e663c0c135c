#!/usr/bin/env bash
# Soak: `serve` under steady signed load with a SIGKILL and an immediate restart at a fixed interval, then
# a final drain. Reports notifications sent, acknowledged, processed, duplicates suppressed and lost
# (acknowledged but never processed: must be 0), as Markdown. Exits non-zero if one was lost or
# processed twice.
#
#   bench/soak.sh                                   # 1,000/s for 2 minutes, kill -9 every 20 s
#   bench/soak.sh --duration 600 --kill-every 30    # 10 minutes
#   bench/soak.sh --rate 2000 --redeliver-pct 5 --visibility-timeout 10
#
# Options go to examples/soak.rs (`--help` lists them). `--visibility-timeout` (default 5 s here, serve's
# own default is 30 s) is how soon a message that a killed server had received is handed out again.
set -euo pipefail
cd "$(dirname "$0")/.."

SOAK_PID=""
SCRATCH=$(mktemp -d -t soak.XXXXXX)
cleanup() {
  stop_driver
  rm -rf "$SCRATCH"
}
stop_driver() {
  [[ -n "$SOAK_PID" ]] || return 0
  local children
  children=$(ps -o pid= --ppid "$SOAK_PID" 2>/dev/null || true)
  kill -TERM "$SOAK_PID" 2>/dev/null || true
  for pid in $children; do kill -TERM "$pid" 2>/dev/null || true; done
  wait "$SOAK_PID" 2>/dev/null || true
  for pid in $children; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "building the release binary and the soak driver..." >&2
cargo build --release --quiet --bin intercom-webhooks
cargo build --release --quiet --example soak
# A fresh build leaves hundreds of MB of dirty pages; their write-back makes every fsync slow for a while.
sync

target/release/examples/soak --bin target/release/intercom-webhooks --dir "$SCRATCH" "$@" &
SOAK_PID=$!
status=0
wait "$SOAK_PID" || status=$?
SOAK_PID=""
exit "$status"
