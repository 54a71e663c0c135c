#!/usr/bin/env bash
# Which B-trees `serve`'s commits write, under load: runs examples/latency_probe.rs (its options, by
# default a new object per notification at 5,000/s for 15 s), copies `serve`'s database and WAL together
# three times during the run, 2 s apart from the 8th second on, and prints each copy's WAL frames per
# commit by table and index (bench/wal-pages.py). The probe's own report follows.
#
#   bench/wal-pages.sh
#   bench/wal-pages.sh --rate 3000 --ids counted
#
# Copying the files reads them while `serve` writes, which costs it a little during each copy. Figures
# depend on the run; nothing here is a test. Needs Python's sqlite3 with the dbstat table.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

ARGS=("$@")
((${#ARGS[@]})) || ARGS=(--fresh-objects --rate 5000 --duration 15 --no-saturation)
python3 -c "import sqlite3; sqlite3.connect(':memory:').execute('SELECT 1 FROM dbstat')" 2>/dev/null ||
  { echo "Python's sqlite3 has no dbstat table here" >&2; exit 1; }
scratch=$(mktemp -d -t wal-pages.XXXXXX)
trap 'stop_driver; rm -rf "$scratch"' EXIT
trap 'exit 130' INT TERM
echo "building the release binary and examples/latency_probe.rs..." >&2
cargo build --release --quiet --bin intercom-webhooks
cargo build --release --quiet --example latency_probe
settle_disk
target/release/examples/latency_probe --bin target/release/intercom-webhooks --dir "$scratch/run" \
  "${ARGS[@]}" >"$scratch/report.md" &
DRIVER_PID=$!
mkdir -p "$scratch/run"
sleep 8
copies=()
for i in 1 2 3; do
  db=$(find "$scratch/run" -name serve.db | head -1)
  [[ -n "$db" ]] || { echo "no serve.db under $scratch/run after 8 s" >&2; exit 1; }
  mkdir "$scratch/copy-$i"
  cp "$db" "$scratch/copy-$i/serve.db"
  cp "$db-wal" "$scratch/copy-$i/serve.db-wal"
  copies+=("$scratch/copy-$i")
  sleep 2
done
wait "$DRIVER_PID"
DRIVER_PID=""
echo "### WAL frames by B-tree"
python3 bench/wal-pages.py "${copies[@]}" | sed "s|$scratch/||"
echo
cat "$scratch/report.md"
