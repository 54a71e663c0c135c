-- wrk script for bench/intake.sh: POSTs one real Intercom notification, signed, on every request.
--
--   BODY_FILE=events/notifications/conversation_user_created.json SIGNATURE=sha1=... \
--     wrk -t2 -c64 -d15s --latency -s bench/wrk-post.lua http://127.0.0.1:8080/webhooks/intercom
--
-- BODY_FILE is sent byte for byte (the signature covers the exact bytes); SIGNATURE is its
-- X-Hub-Signature, e.g. from `intercom-webhooks sign --secret-file S FILE`. done() prints one
-- machine-readable line, WRK_RESULT, that bench/intake.sh parses.

local path = os.getenv("BODY_FILE")
local signature = os.getenv("SIGNATURE")
if not path or not signature then
  error("set BODY_FILE and SIGNATURE")
end
local file = assert(io.open(path, "rb"))
local body = file:read("*a")
file:close()

wrk.method = "POST"
wrk.body = body
wrk.headers["content-type"] = "application/json"
wrk.headers["x-hub-signature"] = signature

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK_RESULT requests=%d duration_us=%d bytes=%d non2xx=%d connect=%d read=%d write=%d timeout=%d " ..
    "p50_us=%d p90_us=%d p99_us=%d max_us=%d mean_us=%.0f\n",
    summary.requests, summary.duration, summary.bytes, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
