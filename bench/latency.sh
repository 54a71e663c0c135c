#!/usr/bin/env bash
# End-to-end latency of `serve` (POST → the handler's completion, read from the `outcome` log line's
# timestamp) at a fixed offered rate, then a saturation run with offered rates stepping up. Prints Markdown.
#
#   bench/latency.sh                              # 1,000/s for 15 s, then 1k,2k,...,8k/s, 5 s each
#   bench/latency.sh --rate 2000 --duration 30
#   bench/latency.sh --steps 4000,5000,6000 --step-secs 10 --pollers 8 --all-steps
#   bench/latency.sh --fresh-objects --rate 5000 --ids counted   # ids counted (default: as Intercom's)
#   bench/latency.sh --rate 5000 --no-saturation --serve-arg=--worker-nice=5   # any `serve` option
#   bench/latency.sh --fresh-objects --rate 5000 --no-saturation --runs 5   # the median of five runs
#
# The latency run also reports the work per notification: the CPU time of `serve` (all its threads) and of
# the probe, `serve`'s syncs of its WAL, what the disk holding its database wrote, and how busy the
# machine's cores were (Linux: from /proc).
#
# `--runs N` runs it all N times, one after another, then prints each run's p99 and their median (bench/runs.py).
# Other options go to examples/latency_probe.rs (`--help` lists them). The probe, the server and its
# SQLite commits share the machine's cores. Nothing here is a timed test; the figures depend on the machine.
set -euo pipefail
SELF=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
cd "$(dirname "$0")/.."

source bench/lib.sh
runs_option "$@"
if ((RUNS > 1)); then repeat_runs latency "$SELF" "${ARGS_LEFT[@]}"; exit; fi
run_driver latency_probe "${ARGS_LEFT[@]}"
