#!/usr/bin/env bash
# The least SQLite costs per notification on this machine, whatever design is built on it
# (examples/sqlite_floor.rs): the writing thread's CPU for the queue alone and for a notification's whole
# story (intake, claim, mirror row, queue row deleted) in the fewest writes, per group size, checkpoint
# placement and page size. Prints Markdown.
#
#   bench/sqlite-floor.sh                                   # 100,000 notifications per configuration
#   bench/sqlite-floor.sh --notifications 300000 --groups 64,256 --stories story
#   bench/sqlite-floor.sh --page-sizes 4096,16384 --rate 20000
#   bench/sqlite-floor.sh --keys random      # objects' ids random too (default: as Intercom's; counted: neighbours)
#
# Options go to examples/sqlite_floor.rs (`--help` lists them). Nothing here is a timed test; the figures
# depend on the machine and its disk.
set -euo pipefail
cd "$(dirname "$0")/.."

source bench/lib.sh
echo "building examples/sqlite_floor.rs..." >&2
cargo build --release --quiet --example sqlite_floor
settle_disk
exec target/release/examples/sqlite_floor "$@"
