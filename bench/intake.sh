#!/usr/bin/env bash
# Intake throughput of `serve` (a 200 only after the SQLite commit) under wrk, against two receivers that
# only verify the HMAC and answer 200 without storing anything: the ceiling (examples/ceiling_receiver.rs,
# Rust, the same crates and signature code as `serve`: what this machine can do per delivery) and a
# minimal Node.js (Express) reference. All get the same wrk settings and the same signed fixture; prints
# requests/s, p50 and p99 latency of each, the ratios, and proves every 200 from `serve` was stored
# (wrk's 200s against `enqueued_total` in /metrics, then the queue drained by the worker running
# alongside).
#
#   bench/intake.sh                                    # -t2 -c64 -d15s, conversation_user_created.json
#   bench/intake.sh --fixture events/notifications/ticket_created.json --duration 30s
#   bench/intake.sh --threads 1 --connections 32 --no-reference --no-ceiling
#   bench/intake.sh --bin /path/to/intercom-webhooks --drain-secs 60    # another build, a longer drain
#   bench/intake.sh --serve-arg --no-inspector                           # any `serve` option, repeatable
#   bench/intake.sh --ceiling-stores none,append,sqlite    # the ceiling also with the least durable work
#   bench/intake.sh --no-reference --runs 5                # five runs, then each one's share and the median
#
# The ceiling's stores (examples/ceiling_receiver.rs): `none` stores nothing; `append` appends each body to
# a file and answers after fdatasync, syncing the bodies waiting together (the simplest durable receiver
# we could write); `append-parallel` does the same on four threads and files, a group's sync not waiting
# for the previous one's; `log` writes the groups in place into a file written in full beforehand (so a sync
# has no metadata to write, as in a reused log segment); `log-direct` is `log` with O_DIRECT (no page cache);
# `sqlite` is serve's own queue (`SqliteQueue::send`) without serve's worker, inspector and routes.
#
# Each run also reports the machine's CPU during it (all cores, wrk included): busy, and idle waiting for
# I/O. Cores left idle mean a receiver waits on its syncs rather than works; bench/RESULTS.md compares
# requests per busy CPU to tell the two apart.
#
# The worker of `serve` runs during the load (there is no intake-only mode), at a lower CPU priority than
# the intake, and shares the cores with it and with wrk. Every POST carries the same notification id, so the
# worker processes the first and finds the rest duplicates. Figures depend on the machine; nothing here is
# a test.
#
# Installs what it needs: wrk, curl, Node.js and npm (apt), express (npm, into bench/reference/node_modules).
set -euo pipefail
SELF=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
cd "$(dirname "$0")/.."
ROOT=$PWD

source bench/lib.sh
runs_option "$@"
if ((RUNS > 1)); then repeat_runs intake "$SELF" "${ARGS_LEFT[@]}"; exit; fi
set -- "${ARGS_LEFT[@]}"
REFERENCE=1
CEILING=1
CEILING_STORES=none
DRAIN_SECS=20
BIN=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --threads|--connections|--duration|--fixture) load_option "$1" "$2"; shift 2 ;;
    --no-reference) REFERENCE=0; shift ;;
    --no-ceiling) CEILING=0; shift ;;
    --ceiling-stores) CEILING_STORES=$2; shift 2 ;;
    --drain-secs) DRAIN_SECS=$2; shift 2 ;;
    --bin) BIN=$2; shift 2 ;;
    --serve-arg) SERVE_ARGS+=("$2"); shift 2 ;;
    -h|--help) sed -n '2,34p' "$SELF"; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ -f "$FIXTURE" ]] || { echo "no such fixture: $FIXTURE" >&2; exit 2; }
# The ceiling's stores, as the report describes them.
declare -A STORE_WHAT=(
  [none]="verify + 200, stores nothing"
  [append]="verify, append + fdatasync (group commit), 200"
  [append-parallel]="verify, append + fdatasync (group commit) on four threads and files, 200"
  [log]="verify, write in place into a file written beforehand + fdatasync (group commit), 200"
  [log-direct]="the same as \`log\` with O_DIRECT"
  [sqlite]="verify, serve's SQLite queue without its worker, 200"
)
IFS=, read -r -a STORES <<<"$CEILING_STORES"
for store in "${STORES[@]}"; do
  [[ -v STORE_WHAT[$store] ]] ||
    { echo "--ceiling-stores takes $(printf '%s\n' "${!STORE_WHAT[@]}" | sort | paste -sd, -), not $store" >&2; exit 2; }
done

# --- tools ---------------------------------------------------------------------------------------------
need_load_tools
if [[ $REFERENCE -eq 1 ]]; then
  need node nodejs
  need npm npm
fi

if [[ -z "$BIN" ]]; then
  echo "building the release binary..." >&2
  build_release intercom-webhooks
  BIN=$ROOT/target/release/intercom-webhooks
else
  settle_disk
fi

if [[ $CEILING -eq 1 ]]; then
  echo "building the ceiling receiver (examples/ceiling_receiver.rs)..." >&2
  cargo build --release --quiet --example ceiling_receiver
  CEILING_BIN=$ROOT/target/release/examples/ceiling_receiver
fi

if [[ $REFERENCE -eq 1 ]]; then
  echo "installing the reference receiver's dependencies (npm)..." >&2
  if [[ -f bench/reference/package-lock.json ]]; then
    (cd bench/reference && npm ci --silent --no-audit --no-fund >/dev/null)
  else
    (cd bench/reference && npm install --silent --no-audit --no-fund >/dev/null)
  fi
fi

# --- processes -----------------------------------------------------------------------------------------
with_cleanup intake-bench

SECRET=bench-secret-$RANDOM$RANDOM
SIGNATURE=$(sign_fixture)
BYTES=$(wc -c <"$FIXTURE")

summarise() { # summarise OUTFILE -> "rps p50_ms p99_ms requests non2xx socket_errors cpu_busy% iowait%"
  local line
  line=$(grep '^WRK_RESULT' "$1" | sed 's/^WRK_RESULT/ /')
  python3 - "$line" "$(cat "$1.cpu")" <<'PY'
import sys
f = dict(kv.split("=") for kv in sys.argv[1].split())
requests, secs = int(f["requests"]), int(f["duration_us"]) / 1e6
errors = sum(int(f[k]) for k in ("connect", "read", "write", "timeout"))
busy, iowait = sys.argv[2].split()
print(f"{requests / secs:.0f} {int(f['p50_us']) / 1000:.2f} {int(f['p99_us']) / 1000:.2f} "
      f"{requests} {f['non2xx']} {errors} {busy} {iowait}")
PY
}
metric() { # metric NAME < /metrics text: the sum over every label set
  awk -v n="$1" '$1 == n || index($1, n "{") == 1 { s += $2 } END { printf "%d\n", s }'
}

# --- serve ---------------------------------------------------------------------------------------------
PORT=$(free_port)
start_serve "$PORT" "$TMP/intake.db"
SERVE_PID=$LAST_PID
wait_http "http://127.0.0.1:$PORT/healthz" "$SERVE_PID"

echo "serve: wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency ($FIXTURE, $BYTES bytes)..." >&2
run_wrk "http://127.0.0.1:$PORT/webhooks/intercom" "$TMP/wrk-serve.txt" --latency
read -r S_RPS S_P50 S_P99 S_REQ S_NON2XX S_ERR S_CPU S_IOW < <(summarise "$TMP/wrk-serve.txt")
S_OK=$((S_REQ - S_NON2XX))
curl -fsS --max-time 30 "http://127.0.0.1:$PORT/metrics" >"$TMP/metrics-after-load.txt"
ENQUEUED_AFTER=$(metric intercom_webhooks_enqueued_total <"$TMP/metrics-after-load.txt")
PROCESSED_AFTER=$(metric intercom_webhooks_processed_total <"$TMP/metrics-after-load.txt")

# Let the worker drain what was stored, for at most DRAIN_SECS of wall-clock time.
queued() {
  curl -fsS --max-time 10 "http://127.0.0.1:$PORT/healthz" | python3 -c 'import json,sys; print(json.load(sys.stdin)["queued"])'
}
QUEUED_AFTER=$(queued)
DRAIN_START=$SECONDS
DRAINED=no
while ((SECONDS - DRAIN_START < DRAIN_SECS)); do
  if [[ "$(queued)" == "0" ]]; then DRAINED=yes; break; fi
  sleep 0.5
done
DRAIN_TAKEN=$((SECONDS - DRAIN_START))
curl -fsS --max-time 30 "http://127.0.0.1:$PORT/metrics" >"$TMP/metrics-final.txt"
# Requests still in flight when wrk stopped are committed (and counted) a little later: read it again.
ENQUEUED=$(metric intercom_webhooks_enqueued_total <"$TMP/metrics-final.txt")
PROCESSED_FINAL=$(metric intercom_webhooks_processed_total <"$TMP/metrics-final.txt")
DUPLICATES_FINAL=$(metric intercom_webhooks_duplicates_total <"$TMP/metrics-final.txt")
# SIGTERM: serve finishes its in-flight batches (and their acknowledgements) before it exits.
stop "$SERVE_PID"
OUTCOME_LINES=$(grep -c '"message":"outcome"' "$TMP/serve.log" || true)
# `in_flight` and `retry` outcomes put the message back on the queue; every other outcome settles it.
SETTLED=$(grep '"message":"outcome"' "$TMP/serve.log" | grep -cv '"outcome":"in_flight"\|"outcome":"retry"' || true)
# What is left in the file: every stored message is either still there or was processed (and deleted).
LEFT=$(python3 -c 'import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute("SELECT count(*) FROM queue").fetchone()[0])' "$TMP/intake.db")
DEAD=$(python3 -c 'import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute("SELECT count(*) FROM dead_letters").fetchone()[0])' "$TMP/intake.db")

# --- ceiling -------------------------------------------------------------------------------------------
declare -A C_RPS C_P50 C_P99 C_REQ C_NON2XX C_ERR C_CPU C_IOW
if [[ $CEILING -eq 1 ]]; then
  for store in "${STORES[@]}"; do
    CPORT=$(free_port)
    mkdir -p "$TMP/ceiling-$store"
    INTERCOM_CLIENT_SECRET=$SECRET "$CEILING_BIN" "127.0.0.1:$CPORT" --store "$store" "$TMP/ceiling-$store" \
      >"$TMP/ceiling-$store.log" 2>&1 &
    CEILING_PID=$!
    PIDS+=("$CEILING_PID")
    wait_http "http://127.0.0.1:$CPORT/healthz" "$CEILING_PID"
    echo "ceiling (Rust, verify, store: $store, 200): the same wrk settings..." >&2
    run_wrk "http://127.0.0.1:$CPORT/webhooks/intercom" "$TMP/wrk-ceiling-$store.txt" --latency
    read -r "C_RPS[$store]" "C_P50[$store]" "C_P99[$store]" "C_REQ[$store]" "C_NON2XX[$store]" "C_ERR[$store]" \
      "C_CPU[$store]" "C_IOW[$store]" < <(summarise "$TMP/wrk-ceiling-$store.txt")
    stop "$CEILING_PID"
    rm -rf "$TMP/ceiling-$store"
  done
fi

# --- reference -----------------------------------------------------------------------------------------
if [[ $REFERENCE -eq 1 ]]; then
  RPORT=$(free_port)
  INTERCOM_CLIENT_SECRET=$SECRET PORT=$RPORT node bench/reference/server.js >"$TMP/ref.log" 2>&1 &
  REF_PID=$!
  PIDS+=("$REF_PID")
  wait_http "http://127.0.0.1:$RPORT/healthz" "$REF_PID"
  echo "reference (Node.js $(node --version), Express): the same wrk settings..." >&2
  run_wrk "http://127.0.0.1:$RPORT/webhooks/intercom" "$TMP/wrk-ref.txt" --latency
  read -r R_RPS R_P50 R_P99 R_REQ R_NON2XX R_ERR R_CPU R_IOW < <(summarise "$TMP/wrk-ref.txt")
  stop "$REF_PID"
fi

# --- report --------------------------------------------------------------------------------------------
echo
echo "### Intake throughput"
echo
echo "wrk \`-t$THREADS -c$CONNECTIONS -d$DURATION --latency -s bench/wrk-post.lua\`, POST /webhooks/intercom with"
echo "\`$FIXTURE\` ($BYTES bytes), signed with \`intercom-webhooks sign\`; wrk and the server share the machine."
echo
echo "| receiver | requests/s | p50 | p99 | requests | non-2xx | socket errors | CPU busy / I/O wait |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
echo "| \`serve\` (SQLite, durable ack) | $S_RPS | $S_P50 ms | $S_P99 ms | $S_REQ | $S_NON2XX | $S_ERR | $S_CPU % / $S_IOW % |"
if [[ $CEILING -eq 1 ]]; then
  for store in "${STORES[@]}"; do
    what=${STORE_WHAT[$store]}
    echo "| ceiling, store \`$store\` (Rust, the same crates, $what) | ${C_RPS[$store]} | ${C_P50[$store]} ms | ${C_P99[$store]} ms | ${C_REQ[$store]} | ${C_NON2XX[$store]} | ${C_ERR[$store]} | ${C_CPU[$store]} % / ${C_IOW[$store]} % |"
  done
fi
if [[ $REFERENCE -eq 1 ]]; then
  echo "| reference (Node.js $(node --version), Express 5, verify + 200, stores nothing) | $R_RPS | $R_P50 ms | $R_P99 ms | $R_REQ | $R_NON2XX | $R_ERR | $R_CPU % / $R_IOW % |"
  RATIO=$(python3 -c "print(f'{$S_RPS / $R_RPS:.2f}')")
  MET=$(python3 -c "print('met' if $S_RPS >= 5 * $R_RPS else 'missed')")
  echo
  echo "Ratio \`serve\` / reference: **${RATIO}×** (goal ≥ 5×: $MET)."
fi
if [[ $CEILING -eq 1 ]]; then
  echo
  for store in "${STORES[@]}"; do
    SHARE=$(python3 -c "print(f'{100 * $S_RPS / ${C_RPS[$store]}:.1f}')")
    if [[ $store == none ]]; then
      CMET=$(python3 -c "print('met' if $S_RPS >= 0.75 * ${C_RPS[$store]} else 'missed')")
      echo "\`serve\` / ceiling: **${SHARE} %** of the ceiling's requests/s (goal ≥ 75 %: $CMET)."
    else
      echo "\`serve\` / ceiling with store \`$store\`: **${SHARE} %**."
    fi
    if [[ $store != none && " ${STORES[*]} " == *" none "* ]]; then
      echo "Ceiling with store \`$store\` / ceiling storing nothing: $(python3 -c "print(f'{100 * ${C_RPS[$store]} / ${C_RPS[none]}:.1f}')") %."
    fi
  done
fi
echo
STORED=$((LEFT + SETTLED))
echo "Durability check (\`serve\`): wrk counted $S_OK answers 200; \`intercom_webhooks_enqueued_total\` = $ENQUEUED"
echo "($( ((ENQUEUED - S_OK >= 0 && ENQUEUED - S_OK <= CONNECTIONS)) && echo consistent || echo INCONSISTENT): a request in flight when wrk stops may be answered"
echo "after wrk stopped counting, so the difference, $((ENQUEUED - S_OK)), may be 0 to $CONNECTIONS)."
echo "When wrk stopped: $ENQUEUED_AFTER enqueued so far, $QUEUED_AFTER still queued, $PROCESSED_AFTER processed by the worker"
echo "running alongside. The worker then had ${DRAIN_SECS} s to drain (drained: $DRAINED, after ${DRAIN_TAKEN} s;"
echo "$PROCESSED_FINAL outcomes, $DUPLICATES_FINAL of them duplicates: every POST carries the same notification id)."
echo "After SIGTERM, counted in the database file and the log: $LEFT messages left + $SETTLED settled by the worker"
echo "(of $OUTCOME_LINES outcome lines; the others are \`in_flight\`: a copy with the same id was being processed,"
echo "so it went back on the queue) = **$STORED stored**, $DEAD dead letters. Against the $S_OK answers 200:"
echo "$( ((STORED - S_OK >= 0 && STORED - S_OK <= CONNECTIONS)) && echo 'every 200 was stored' || echo 'MISMATCH')"
echo "(the surplus, $((STORED - S_OK)), may be 0 to $CONNECTIONS: requests committed while wrk was closing its connections, so"
echo "never answered; $((STORED - ENQUEUED)) of them are not in \`enqueued_total\` either, which counts only answers)."
echo
echo "Raw wrk output (\`serve\`):"
echo
echo '```'
grep -v '^WRK_RESULT' "$TMP/wrk-serve.txt"
echo '```'
if [[ $CEILING -eq 1 ]]; then
  for store in "${STORES[@]}"; do
    echo
    echo "Raw wrk output (ceiling, store \`$store\`):"
    echo
    echo '```'
    grep -v '^WRK_RESULT' "$TMP/wrk-ceiling-$store.txt"
    echo '```'
  done
fi
if [[ $REFERENCE -eq 1 ]]; then
  echo
  echo "Raw wrk output (reference):"
  echo
  echo '```'
  grep -v '^WRK_RESULT' "$TMP/wrk-ref.txt"
  echo '```'
fi
