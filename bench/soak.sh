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

source bench/lib.sh
run_driver soak "$@"
