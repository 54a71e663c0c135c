# Shared by the bench scripts: `source bench/lib.sh` from the repository root, after `set -euo pipefail`.

# A fresh build leaves hundreds of MB of dirty pages; their write-back makes every fsync slow for a while.
settle_disk() {
  sync
}

# --- several runs (--runs N of intake.sh and latency.sh) ---------------------------------------------------
# runs_option ARGS...: RUNS from `--runs N` (1 without it), ARGS_LEFT the other arguments, in order.
runs_option() {
  RUNS=1
  ARGS_LEFT=()
  while [[ $# -gt 0 ]]; do
    if [[ $1 == --runs ]]; then
      [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || { echo "--runs takes a number of runs (1 or more), not '${2:-}'" >&2; exit 2; }
      RUNS=$2
      shift 2
    else
      ARGS_LEFT+=("$1")
      shift
    fi
  done
}
# repeat_runs KIND SCRIPT ARGS...: runs SCRIPT ARGS RUNS times, one after another, each report in full under
# its own heading, then bench/runs.py KIND: every run's figures in one table, and their median.
repeat_runs() {
  local kind=$1 script=$2 dir i
  shift 2
  dir=$(mktemp -d -t runs.XXXXXX)
  # shellcheck disable=SC2064 # expand now: the folder is this call's
  trap "rm -rf '$dir'" EXIT
  trap 'exit 130' INT TERM
  local reports=()
  for i in $(seq 1 "$RUNS"); do
    echo
    echo "## Run $i of $RUNS ($(date -u '+%Y-%m-%d %H:%M:%S') UTC)"
    "$script" "$@" | tee "$dir/run-$i.md"
    reports+=("$dir/run-$i.md")
  done
  echo
  echo "## The $RUNS runs together"
  echo
  python3 bench/runs.py "$kind" "${reports[@]}"
}

# --- tools ---------------------------------------------------------------------------------------------
SUDO=""
[[ "$(id -u)" -eq 0 ]] || SUDO=sudo
APT_UPDATED=0
apt_install() { # apt_install PACKAGE...
  if [[ $APT_UPDATED -eq 0 ]]; then $SUDO apt-get update -qq; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}
need() { # need COMMAND APT_PACKAGE
  command -v "$1" >/dev/null 2>&1 || apt_install "$2"
}

# --- background processes ------------------------------------------------------------------------------
# Every PID added to PIDS is stopped (SIGTERM, then SIGKILL after 5 s) and TMP is removed when the script
# exits, however it exits.
PIDS=()
TMP=""
cleanup_processes() {
  for pid in ${PIDS[@]+"${PIDS[@]}"}; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in ${PIDS[@]+"${PIDS[@]}"}; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  [[ -z "$TMP" ]] || rm -rf "$TMP"
}
with_cleanup() { # with_cleanup NAME: makes TMP (mktemp -d -t NAME.XXXXXX) and installs the traps
  TMP=$(mktemp -d -t "$1.XXXXXX")
  trap cleanup_processes EXIT
  trap 'exit 130' INT TERM
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_http() { # wait_http URL PID
  for _ in $(seq 1 200); do
    curl -fsS --max-time 2 -o /dev/null "$1" 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || { echo "the server exited before answering $1" >&2; return 1; }
    sleep 0.05
  done
  echo "timed out waiting for $1" >&2
  return 1
}
stop() { # stop PID: SIGTERM, wait (at most 30 s), then SIGKILL
  kill -TERM "$1" 2>/dev/null || true
  for _ in $(seq 1 300); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
}

# --- load on serve (intake.sh, footprint.sh) -------------------------------------------------------------
# wrk's settings and the fixture it posts; load_option sets one from the command line.
THREADS=2
CONNECTIONS=64
DURATION=15s
FIXTURE=events/notifications/conversation_user_created.json
load_option() { # load_option --threads|--connections|--duration|--fixture VALUE
  case "$1" in
    --threads) THREADS=$2 ;;
    --connections) CONNECTIONS=$2 ;;
    --duration) DURATION=$2 ;;
    --fixture) FIXTURE=$2 ;;
    *) echo "load_option: unknown option $1" >&2; return 2 ;;
  esac
}
need_load_tools() {
  need wrk wrk
  need curl curl
  need python3 python3
}
build_release() { # build_release BINARY...: the release build of these binaries, then a settled disk
  local bins=()
  for bin in "$@"; do bins+=(--bin "$bin"); done
  cargo build --release --quiet "${bins[@]}"
  settle_disk
}
sign_fixture() { # sign_fixture: the X-Hub-Signature of FIXTURE under SECRET, from BIN's `sign`
  INTERCOM_CLIENT_SECRET=$SECRET "$BIN" sign "$FIXTURE"
}
# start_serve PORT DB [WRAPPER...]: starts `BIN serve` on 127.0.0.1:PORT with the client secret SECRET,
# under WRAPPER if given (e.g. /usr/bin/time -v -o FILE), JSON logs in TMP/serve.log, errors in
# TMP/serve.err. LAST_PID is the process started (the wrapper, if any), stopped when the script exits.
# SERVE_ARGS (an array, empty unless a script fills it) is added to the `serve` command line.
LAST_PID=""
SERVE_ARGS=()
start_serve() {
  local port=$1 db=$2
  shift 2
  INTERCOM_CLIENT_SECRET=$SECRET "$@" "$BIN" serve --listen "127.0.0.1:$port" --db "$db" \
    --log-format json "${SERVE_ARGS[@]}" >"$TMP/serve.log" 2>"$TMP/serve.err" &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}
# run_wrk URL OUTFILE [WRK_OPTION...]: wrk with THREADS, CONNECTIONS, DURATION, POSTing FIXTURE signed with
# SIGNATURE (bench/wrk-post.lua). In the background, so that a signal stops the script at once.
run_wrk() {
  local url=$1 out=$2
  shift 2
  local before
  before=$(head -1 /proc/stat)
  env BODY_FILE="$FIXTURE" SIGNATURE="$SIGNATURE" \
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" "$@" -s bench/wrk-post.lua "$url" >"$out" &
  local pid=$!
  PIDS+=("$pid")
  wait "$pid"
  cpu_share "$before" "$(head -1 /proc/stat)" >"$out.cpu"
}

# cpu_share BEFORE AFTER: two `cpu` lines of /proc/stat -> "busy_percent iowait_percent" of all cores
# between them (busy: neither idle nor waiting for I/O).
cpu_share() {
  python3 - "$1" "$2" <<'PY'
import sys
before, after = ([int(x) for x in line.split()[1:]] for line in sys.argv[1:3])
delta = [a - b for a, b in zip(after, before)]
total = sum(delta[:8]) or 1  # user nice system idle iowait irq softirq steal
idle, iowait = delta[3], delta[4]
print(f"{100 * (total - idle - iowait) / total:.0f} {100 * iowait / total:.0f}")
PY
}

# --- drivers -------------------------------------------------------------------------------------------
# run_driver EXAMPLE ARGS...: builds the release `intercom-webhooks` and examples/EXAMPLE.rs, then runs the
# example with `--bin target/release/intercom-webhooks --dir SCRATCH ARGS...` and returns its exit status.
# The example starts `serve` itself and stops it when it ends; if this script is interrupted, the example
# and its children are stopped. start_driver and wait_driver are its two halves, for a script that works
# beside the example while it runs: DRIVER_SCRATCH is the example's folder, removed when the script exits,
# and with DRIVER_OUTPUT set the example's output goes to that file in the folder instead of stdout.
DRIVER_PID=""
DRIVER_SCRATCH=""
DRIVER_OUTPUT=""
stop_driver() {
  [[ -n "$DRIVER_PID" ]] || return 0
  local children
  children=$(ps -o pid= --ppid "$DRIVER_PID" 2>/dev/null || true)
  kill -TERM "$DRIVER_PID" 2>/dev/null || true
  for pid in $children; do kill -TERM "$pid" 2>/dev/null || true; done
  wait "$DRIVER_PID" 2>/dev/null || true
  for pid in $children; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
}
start_driver() {
  local example=$1
  shift
  DRIVER_SCRATCH=$(mktemp -d -t "$example.XXXXXX")
  # shellcheck disable=SC2064 # expand now: the folder is this call's
  trap "stop_driver; rm -rf '$DRIVER_SCRATCH'" EXIT
  trap 'exit 130' INT TERM
  echo "building the release binary and examples/$example.rs..." >&2
  cargo build --release --quiet --bin intercom-webhooks
  cargo build --release --quiet --example "$example"
  settle_disk
  local run=("target/release/examples/$example" --bin target/release/intercom-webhooks --dir "$DRIVER_SCRATCH" "$@")
  if [[ -n "$DRIVER_OUTPUT" ]]; then
    "${run[@]}" >"$DRIVER_SCRATCH/$DRIVER_OUTPUT" &
  else
    "${run[@]}" &
  fi
  DRIVER_PID=$!
}
wait_driver() {
  local status=0
  wait "$DRIVER_PID" || status=$?
  DRIVER_PID=""
  return "$status"
}
run_driver() {
  start_driver "$@"
  wait_driver
}
