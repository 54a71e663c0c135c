#!/usr/bin/env bash
# Lambda footprint: the size of the release `receiver`, `worker` and `reconciler` binaries and of their
# deployment zips (arm64 when a build is there: .aws-sam/build from `sam build`, or target/lambda from
# `cargo lambda build --arm64`; x86_64 from `cargo build --release` otherwise); the start-up time of the
# x86_64 release `receiver` under the Lambda runtime emulator (`cargo lambda watch --only-lambda-apis`),
# from process start to its "receiver ready" log line and to its first answer (a signed ping, which needs
# no AWS call), and of the `worker` to its "worker ready" line, each with the machine's root certificates
# and again with them from one bundle file as on Lambda; the receiver's peak memory after its first answer
# and after a burst of pings of about 1 MB each on one instance; and the peak memory (max RSS,
# /usr/bin/time -v) of `serve` under the intake load of bench/intake.sh. Prints Markdown.
#
#   bench/footprint.sh                       # 20 start-ups, wrk -t2 -c64 -d15s
#   bench/footprint.sh --runs 50 --duration 30s
#
# Installs what it needs: wrk, curl, time (apt); cargo-lambda (PyPI, into a temporary virtualenv unless
# .venv/bin/cargo-lambda or cargo-lambda on PATH exists).
set -euo pipefail
SELF=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
cd "$(dirname "$0")/.."
ROOT=$PWD

source bench/lib.sh
RUNS=20
while [[ $# -gt 0 ]]; do
  case "$1" in
    --runs) RUNS=$2; shift 2 ;;
    --threads|--connections|--duration|--fixture) load_option "$1" "$2"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$SELF"; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done

need_load_tools
[[ -x /usr/bin/time ]] || apt_install time

with_cleanup footprint-bench

CARGO_LAMBDA=""
if [[ -x .venv/bin/cargo-lambda ]]; then
  CARGO_LAMBDA=$ROOT/.venv/bin/cargo-lambda
elif command -v cargo-lambda >/dev/null 2>&1; then
  CARGO_LAMBDA=$(command -v cargo-lambda)
else
  echo "installing cargo-lambda into a temporary virtualenv..." >&2
  need_version=$(grep -i '^cargo-lambda' scripts/requirements-test.txt 2>/dev/null || echo cargo-lambda)
  python3 -m venv "$TMP/venv"
  "$TMP/venv/bin/pip" install --quiet --disable-pip-version-check "$need_version"
  CARGO_LAMBDA=$TMP/venv/bin/cargo-lambda
fi

echo "building the x86_64 release binaries..." >&2
build_release receiver worker reconciler intercom-webhooks

# --- sizes ---------------------------------------------------------------------------------------------
arch_of() { # the ELF machine of a binary
  python3 - "$1" <<'PY'
import struct, sys
with open(sys.argv[1], "rb") as f:
    head = f.read(20)
machine = struct.unpack("<H", head[18:20])[0] if head[:4] == b"\x7fELF" else None
print({0xB7: "arm64", 0x3E: "x86_64"}.get(machine, "unknown"))
PY
}
zip_size() { # zip_size BINARY ZIPFILE: a Lambda zip (the binary as `bootstrap`, deflate) and its size
  python3 - "$1" "$2" <<'PY'
import os, sys, zipfile
binary, out = sys.argv[1], sys.argv[2]
info = zipfile.ZipInfo("bootstrap")
info.compress_type = zipfile.ZIP_DEFLATED
info.external_attr = 0o755 << 16
with open(binary, "rb") as f, zipfile.ZipFile(out, "w") as z:
    z.writestr(info, f.read())
print(os.path.getsize(out))
PY
}
LAMBDA_ROWS=()
# Each function's deployable binary: from `sam build` when all three are there, else from
# `cargo lambda build --arm64` when all three are there, else the x86_64 release build.
FUNCTIONS=(receiver:ReceiverFunction worker:WorkerFunction reconciler:ReconcilerFunction)
deploy_path() { # deploy_path sam|lambda FUNCTION: where that build puts the function's binary
  local name=${2%%:*} resource=${2#*:}
  if [[ $1 == sam ]]; then echo ".aws-sam/build/$resource/bootstrap"; else echo "target/lambda/$name/bootstrap"; fi
}
all_built() { # all_built sam|lambda: whether that build has all three functions
  local f
  for f in "${FUNCTIONS[@]}"; do [[ -f $(deploy_path "$1" "$f") ]] || return 1; done
}
BUILD=""
SOURCE="x86_64 release build (\`cargo build --release\`; no arm64 build of all three functions found)"
if all_built sam; then
  BUILD=sam
  SOURCE="\`sam build\` (.aws-sam/build, built $(date -r "$(deploy_path sam "${FUNCTIONS[0]}")" '+%Y-%m-%d %H:%M'))"
elif all_built lambda; then
  BUILD=lambda
  SOURCE="\`cargo lambda build\` (target/lambda, built $(date -r "$(deploy_path lambda "${FUNCTIONS[0]}")" '+%Y-%m-%d %H:%M'))"
fi
PAIRS=()
for f in "${FUNCTIONS[@]}"; do
  [[ -n "$BUILD" ]] && PAIRS+=("${f%%:*}:$(deploy_path "$BUILD" "$f")")
done
for f in "${FUNCTIONS[@]}"; do PAIRS+=("${f%%:*}:target/release/${f%%:*}"); done
for pair in "${PAIRS[@]}"; do
  name=${pair%%:*}
  file=${pair#*:}
  key="$name:$(arch_of "$file")"
  # Each (binary, architecture) once.
  [[ " ${SEEN_KEYS:-} " == *" $key "* ]] && continue
  SEEN_KEYS="${SEEN_KEYS:-} $key"
  bytes=$(stat -c %s "$file")
  zipped=$(zip_size "$file" "$TMP/$name-$(arch_of "$file").zip")
  LAMBDA_ROWS+=("| \`$name\` | $(arch_of "$file") | \`$file\` | $bytes ($(python3 -c "print(f'{$bytes/1048576:.1f}')") MiB) | $zipped ($(python3 -c "print(f'{$zipped/1048576:.1f}')") MiB) | $( ((zipped <= 4000000)) && echo yes || echo no) |")
done

# --- start-up under the runtime emulator ---------------------------------------------------------------
LPORT=$(free_port)
"$CARGO_LAMBDA" lambda watch --only-lambda-apis -A 127.0.0.1 -P "$LPORT" >"$TMP/watch.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 300); do
  python3 -c "import socket; socket.create_connection(('127.0.0.1', $LPORT), 0.2)" 2>/dev/null && break
  sleep 0.1
done
SECRET=footprint-secret
echo "start-up: $RUNS runs each of target/release/{receiver,worker} under cargo lambda watch (twice as many with a bundle)..." >&2
python3 - "$ROOT/target/release/receiver" "$LPORT" "$RUNS" "$ROOT/events/notifications/ping.json" "$SECRET" \
  "$ROOT/target/release/worker" \
  >"$TMP/startup.txt" <<'PY' &
import hashlib, hmac, json, os, select, signal, statistics, subprocess, sys, time, urllib.request

signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # runs the clean-ups that kill the functions

binary, port, runs, ping, secret = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
worker = sys.argv[6]
body = open(ping, "rb").read()
signature = "sha1=" + hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()
env = dict(
    os.environ,
    AWS_LAMBDA_FUNCTION_NAME="receiver",
    AWS_LAMBDA_FUNCTION_VERSION="1",
    AWS_LAMBDA_FUNCTION_MEMORY_SIZE="128",
    AWS_LAMBDA_RUNTIME_API=f"http://127.0.0.1:{port}/.rt/receiver",
    INTERCOM_CLIENT_SECRET=secret,
    # Never reached: start-up and a ping make no AWS call.
    QUEUE_URL="http://127.0.0.1:9/123456789012/notifications",
    DEAD_LETTER_QUEUE_URL="http://127.0.0.1:9/123456789012/dead-letters",
    AWS_REGION="us-east-1",
    AWS_ACCESS_KEY_ID="x",
    AWS_SECRET_ACCESS_KEY="x",
    AWS_SESSION_TOKEN="x",
    RUST_LOG="info",
)
env.pop("AWS_ENDPOINT_URL", None)
# Lambda sets neither; a developer's shell may (both name where OpenSSL's roots are).
env.pop("SSL_CERT_FILE", None)
env.pop("SSL_CERT_DIR", None)
# The root certificates the SDK's TLS client loads at start-up: the machine's own layout, and, when the
# machine has one, a single bundle file named by SSL_CERT_FILE, which is how Lambda's Amazon Linux keeps
# them (Debian adds a directory of one file per root, which rustls-native-certs reads as well).
bundle = next((b for b in ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")
               if os.path.isfile(b)), None)
def spawn(binary, env, marker):
    """Starts `binary` and waits for its `marker` log line: the process and the milliseconds it took."""
    start = time.perf_counter()
    p = subprocess.Popen([binary], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        buf, deadline = b"", start + 10
        while time.perf_counter() < deadline:
            r, _, _ = select.select([p.stdout], [], [], 0.5)
            if r:
                chunk = os.read(p.stdout.fileno(), 65536)
                if not chunk:
                    break
                buf += chunk
                if marker in buf:
                    return p, start, (time.perf_counter() - start) * 1000
        sys.exit(f"no {marker!r} line within 10 s: {buf[-500:]!r}")
    except BaseException:  # also SIGTERM's SystemExit: the process is not left behind
        p.kill()
        p.wait()
        raise

def with_bundle(e):
    return dict(e, SSL_CERT_FILE=bundle)

ready, first, hwm, ready_bundle = [], [], [], []
for i in range(2 * runs if bundle else runs):
    one_bundle = i % 2 == 1
    p, start, ms = spawn(binary, with_bundle(env) if one_bundle else env, b"receiver ready")
    try:
        (ready_bundle if one_bundle else ready).append(ms)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/lambda-url/receiver/", data=body, method="POST",
            headers={"content-type": "application/json", "x-hub-signature": signature})
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200, answer.status
        if one_bundle:
            continue
        first.append((time.perf_counter() - start) * 1000)
        with open(f"/proc/{p.pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    hwm.append(int(line.split()[1]))
    finally:
        p.kill()
        p.wait()

# A burst on one instance: Lambda gives an instance one request at a time, so what its 128 MB must hold is
# the largest request the receiver accepts on top of whatever the requests before it left behind. Pings
# need no AWS call; each carries a message that makes it about 1 MB (MAX_BODY_BYTES is 1,040,384).
big = json.loads(body)
big["data"]["item"]["message"] = "x" * 1_000_000
big = json.dumps(big).encode()
big_signature = "sha1=" + hmac.new(secret.encode(), big, hashlib.sha1).hexdigest()
BURST = 50
p, _, _ = spawn(binary, env, b"receiver ready")
try:
    for _ in range(BURST):
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/lambda-url/receiver/", data=big, method="POST",
            headers={"content-type": "application/json", "x-hub-signature": big_signature})
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200, answer.status
    with open(f"/proc/{p.pid}/status") as status:
        burst_hwm = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
finally:
    p.kill()
    p.wait()

# The worker as template.yaml configures it with the mirror and EventBridge on: every client it can make
# (DynamoDB, SQS, EventBridge) is made before its "worker ready" line. Nothing is invoked.
worker_env = dict(
    env,
    AWS_LAMBDA_FUNCTION_NAME="worker",
    AWS_LAMBDA_FUNCTION_MEMORY_SIZE="256",
    AWS_LAMBDA_RUNTIME_API=f"http://127.0.0.1:{port}/.rt/worker",
    IDEMPOTENCY_TABLE="idempotency",
    MIRROR_TABLE="mirror",
    EVENT_BUS_NAME="default",
)
worker_ready, worker_ready_bundle = [], []
for i in range(2 * runs if bundle else runs):
    one_bundle = i % 2 == 1
    p, _, ms = spawn(worker, with_bundle(worker_env) if one_bundle else worker_env, b"worker ready")
    p.kill()
    p.wait()
    (worker_ready_bundle if one_bundle else worker_ready).append(ms)

def row(name, xs, unit="ms", fmt="{:.1f}"):
    xs = sorted(xs)
    return (f"| {name} | " + " | ".join(fmt.format(v) + f" {unit}" for v in
            (statistics.median(xs), xs[0], xs[int(0.9 * (len(xs) - 1))], xs[-1])) + " |")
print("| measure | median | min | p90 | max |")
print("|---|---:|---:|---:|---:|")
one_file = f"root certificates from one bundle file (`SSL_CERT_FILE={bundle}`)"
print(row("`receiver`: process start → `receiver ready` log line", ready))
if ready_bundle:
    print(row(f"the same, {one_file}", ready_bundle))
print(row("`receiver`: process start → first answer (a signed ping through the Function URL)", first))
print(row("`receiver`: peak RSS (VmHWM) after that first answer", [h / 1024 for h in hwm], "MiB"))
print(row(f"`receiver`: peak RSS after {BURST} signed pings of {len(big):,} bytes each, one instance",
          [burst_hwm / 1024], "MiB"))
print(row("`worker`: process start → `worker ready` log line", worker_ready))
if worker_ready_bundle:
    print(row(f"the same, {one_file}", worker_ready_bundle))
print()
for function, machine, one in (("receiver", ready, ready_bundle), ("worker", worker_ready, worker_ready_bundle)):
    for name, xs in (("the machine's root certificates", machine), ("one bundle file", one)):
        if xs:
            verdict = "met" if statistics.median(xs) <= 10 else "not met"
            print(f"Goal: `{function}` process start → ready ≤ 10 ms at the median, {name}: **{verdict}**.")
PY
HARNESS_PID=$!
PIDS+=("$HARNESS_PID")
wait "$HARNESS_PID"

# --- peak memory of serve under the intake load ---------------------------------------------------------
BIN=$ROOT/target/release/intercom-webhooks
SIGNATURE=$(sign_fixture)
PORT=$(free_port)
start_serve "$PORT" "$TMP/footprint.db" /usr/bin/time -v -o "$TMP/time.txt"
TIME_PID=$LAST_PID
SERVE_PID=""
for _ in $(seq 1 100); do
  SERVE_PID=$(ps -o pid= --ppid "$TIME_PID" | tr -d ' ' || true)
  [[ -n "$SERVE_PID" ]] && curl -fsS --max-time 2 -o /dev/null "http://127.0.0.1:$PORT/healthz" 2>/dev/null && break
  sleep 0.05
done
[[ -n "$SERVE_PID" ]] || { echo "serve did not start; $(cat "$TMP/serve.err")" >&2; exit 1; }
PIDS+=("$SERVE_PID")
IDLE_RSS=$(awk '/VmRSS/ {print $2}' "/proc/$SERVE_PID/status")
echo "peak memory: wrk -t$THREADS -c$CONNECTIONS -d$DURATION against serve under /usr/bin/time -v..." >&2
run_wrk "http://127.0.0.1:$PORT/webhooks/intercom" "$TMP/wrk.txt"
RPS=$(awk '/^Requests\/sec/ {printf "%.0f", $2}' "$TMP/wrk.txt")
kill -TERM "$SERVE_PID"
for _ in $(seq 1 300); do kill -0 "$TIME_PID" 2>/dev/null || break; sleep 0.1; done
kill -KILL "$SERVE_PID" 2>/dev/null || true
wait "$TIME_PID" 2>/dev/null || true
MAX_RSS=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$TMP/time.txt")

# --- report --------------------------------------------------------------------------------------------
echo
echo "### Lambda footprint"
echo
echo "Deployable binaries from $SOURCE; zips made with Python's zipfile (deflate, the binary as \`bootstrap\`)."
echo
echo "| binary | arch | file | size | zip | zip ≤ 4 MB (4,000,000 B) |"
echo "|---|---|---|---:|---:|---|"
printf '%s\n' "${LAMBDA_ROWS[@]}"
echo
echo "Start-up of the x86_64 release \`receiver\` and \`worker\` ($RUNS runs each) under \`cargo lambda watch --only-lambda-apis\`"
echo "($("$CARGO_LAMBDA" lambda --version 2>/dev/null | head -1)), with INTERCOM_CLIENT_SECRET (receiver), IDEMPOTENCY_TABLE,"
echo "MIRROR_TABLE and EVENT_BUS_NAME (worker), an unreachable QUEUE_URL and DEAD_LETTER_QUEUE_URL, AWS_REGION and"
echo "static credentials set as Lambda sets them; timed by a Python harness from just before the process is"
echo "spawned (hyperfine does not fit: the functions never exit by themselves):"
echo
cat "$TMP/startup.txt"
echo
echo "Peak memory of \`serve\` under the intake load (wrk \`-t$THREADS -c$CONNECTIONS -d$DURATION\`, \`$FIXTURE\`, $RPS requests/s in"
echo "this run; worker running alongside): max RSS **$((MAX_RSS / 1024)) MiB** ($MAX_RSS kB, \`/usr/bin/time -v\`);"
echo "$((IDLE_RSS / 1024)) MiB ($IDLE_RSS kB) RSS idle after start."
