#!/usr/bin/env bash
# Data Events bulk-send benchmark: a local mock Intercom with a rate limit per window, fed by the paced
# sender (`EventsClient::track_all`) and by a sequential baseline (one at a time, 500 ms pause after every
# 50 events). Prints throughput as a fraction of the limit, the share of 429 answers, lost and duplicated
# events, as a Markdown table.
#
# The default run takes about 1.5 minutes: a shortened 2-second window with a proportional limit (333,
# Intercom's per-app 10,000 a minute scaled to 2 s), 20 ms answer latency, 2,000 events per sender.
#
#   bench/events.sh                        # the default, shortened window
#   bench/events.sh --real-window          # Intercom's 10-second window and 1,667 per window
#                                          # (10,000 events paced, 2,000 for the baseline; ~4 minutes)
#   bench/events.sh --events 5000 --latency-ms 100 --concurrency 32 --no-baseline
#
# Any other options go to the benchmark itself (`--help` lists them). Nothing here is a timed test; the
# figures depend on the machine.
set -euo pipefail
cd "$(dirname "$0")/.."

args=()
for arg in "$@"; do
  if [[ "$arg" == "--real-window" ]]; then
    args+=(--window-secs 10 --limit 1667 --events 10000 --baseline-events 2000)
  else
    args+=("$arg")
  fi
done

cargo run --release --quiet --example events_bench -- ${args[@]+"${args[@]}"}
