#!/usr/bin/env bash
# Which B-trees `serve`'s commits write, under load: runs examples/latency_probe.rs (its options, by
# default a new object per notification at 5,000/s for 15 s), copies `serve`'s database and WAL together
# three times during the run, 2 s apart from the 8th second on, and prints each copy's WAL frames per
# commit by table and index (bench/wal-pages.py). The probe's own report follows.
#
#   bench/wal-pages.sh
#   bench/wal-pages.sh --fresh-objects --rate 3000 --duration 15 --no-saturation --ids counted
#
# Options replace the defaults as a whole; the run must last 13 s at least (warm-up included) for the
# three copies. Copying the files reads them while `serve` writes, which costs it a little during each
# copy. Figures depend on the run; nothing here is a test. Needs Python's sqlite3 with the dbstat table.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

ARGS=("$@")
((${#ARGS[@]})) || ARGS=(--fresh-objects --rate 5000 --duration 15 --no-saturation)
python3 -c "import sqlite3; sqlite3.connect(':memory:').execute('SELECT 1 FROM dbstat')" 2>/dev/null ||
  { echo "Python's sqlite3 has no dbstat table here" >&2; exit 1; }
DRIVER_OUTPUT=report.md
start_driver latency_probe "${ARGS[@]}"
sleep 8
copies=()
for i in 1 2 3; do
  db=$(find "$DRIVER_SCRATCH" -path "$DRIVER_SCRATCH/latency-probe-*/serve.db" | head -1)
  [[ -n "$db" ]] || { echo "no serve.db under $DRIVER_SCRATCH: the run ended or has not started" >&2; exit 1; }
  mkdir "$DRIVER_SCRATCH/copy-$i"
  cp "$db" "$DRIVER_SCRATCH/copy-$i/serve.db"
  cp "$db-wal" "$DRIVER_SCRATCH/copy-$i/serve.db-wal"
  copies+=("$DRIVER_SCRATCH/copy-$i")
  sleep 2
done
wait_driver
echo "### WAL frames by B-tree"
python3 bench/wal-pages.py "${copies[@]}" | sed "s|$DRIVER_SCRATCH/||"
echo
cat "$DRIVER_SCRATCH/report.md"
