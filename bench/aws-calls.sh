#!/usr/bin/env bash
# AWS requests per notification on the Lambda path (receiver + worker + the SQS event source), counted
# against moto_server, with the resulting cost per million notifications.
# Usage: bench/aws-calls.sh [N] [--no-mirror] [--index] [--updates] [--eventbridge] [--record-completion]
#   the mirror is on unless --no-mirror, without its by_type index unless --index, as in the template;
#   the worker completes a batch with one write unless --record-completion (IDEMPOTENCY_COMPLETION=record)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200}
shift || true
if [ ! -x .venv/bin/moto_server ]; then
  python3 -m venv .venv && .venv/bin/pip install --quiet -r scripts/requirements-test.txt
fi
source bench/lib.sh
with_cleanup aws-calls-bench
PORT=$(free_port)
.venv/bin/python scripts/moto-server -H 127.0.0.1 -p "$PORT" >/dev/null 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do
  python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/moto-api/')" 2>/dev/null && break
  sleep 0.1
done
export AWS_ENDPOINT_URL="http://127.0.0.1:$PORT" AWS_REGION=us-east-1
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_EC2_METADATA_DISABLED=true
cargo run ${PROFILE:---release} --quiet --example aws_calls -- "$N" "$@"
