-- wrk script for benchmark (1) of scripts/bench.sh: POST one valid reading with a valid
-- access token (env BENCH_TOKEN) to /api/send/data/, the request the gateway makes.
local token = os.getenv("BENCH_TOKEN") or error("BENCH_TOKEN is not set")
wrk.method = "POST"
wrk.body = '{"accelerometre":0.98,"humidite":51.2,"temperature":23.4,"timestamp":"2026-11-23T22:48:49.123Z"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. token
