#!/usr/bin/env bash
# Benchmarks of issue 7, side by side in one run (about 10 minutes on 2 cores):
#   (1) the server's own limit: wrk -> POST /api/send/data/ (Django + SimpleJWT under
#       gunicorn, 2 workers x gthread 2 threads, 127.0.0.1, DEBUG off)
#   (2) the gateway draining a 20,000-reading backlog into that server (concurrency sweep)
#   (3) the guide's naive client (scripts/bench/naive_client.py) on the same backlog
#   (4) durable enqueue at 1 kHz (+ raw capacity: benches/enqueue/enqueue_bench.rs)
#   (5) idle footprint at a 1 s interval for 60 s, start-to-READY
#   (6) stripped release binary size
#   (2L)/(3L) (2) and (3) again over an emulated WAN link (scripts/bench/delay_proxy.py, a
#       user-space delay proxy on 127.0.0.1, RTT 40 ms; --link-rtt-ms 0 skips it): the
#       gateway at upload.concurrency 32 and 4, the naive client on its first 300 readings
# Then issue 12's figures with the defaults (upload.concurrency = "auto"), by
# scripts/bench/answers_bench.py: drain vs wrk on gunicorn 1x4, 2x4, 4x8; the 40 ms link vs
# the naive client; 30 % HTML 503 + Retry-After vs healthy (duplicates counted); the
# concurrency when the server's latency doubles; 50 gateways through a 30 s outage.
#   (W) SD card wear (issue 14, scripts/bench/wear.py): bytes written per reading at 5 s and
#       1 s sampling (server healthy and unreachable), at 1 kHz, bytes per second idle and MB
#       a day at 5 s; every case its own release daemon, all side by side, for this build
#       and, with WEAR_BEFORE=PATH (e.g. main's binary), for that one in the same run
# Prints every figure, the ratios and the budgets, and writes BENCHMARKS.md.
#
# Usage: bash scripts/bench.sh [run_bench.py options, e.g. --concurrency 4 --idle-seconds 30
#        --link-rtt-ms 40 --link-readings 5000 --link-naive-readings 300]
#        bash scripts/bench.sh --wear [wear.py options, e.g. --window 60]   (W) only, ~2 min
#        WEAR_BEFORE=/path/to/main/profilo-gateway bash scripts/bench.sh --wear
# BENCH_DIR=DIR puts the work files (queues, server DB, logs) there; it must be on a real
# disk (not tmpfs/overlay) for /proc/PID/io write_bytes to count. Default /var/tmp/profilo-bench.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
COMMAND="bash scripts/bench.sh${*:+ $*}"
WORK="${BENCH_DIR:-/var/tmp/profilo-bench}"
say() { echo "[bench] $*"; }

WEAR_ONLY=0
if [ "${1:-}" = "--wear" ]; then
    WEAR_ONLY=1
    shift
fi
# (W): before (WEAR_BEFORE, if given) and after (this build), side by side.
wear() {
    local bins=()
    if [ -n "${WEAR_BEFORE:-}" ]; then bins+=(--binary "before=$WEAR_BEFORE"); fi
    bins+=(--binary "after=$ROOT/target/release/profilo-gateway")
    python3 "$ROOT/scripts/bench/wear.py" --root "$ROOT" --work "$WORK" \
        --command "$COMMAND" --md "$ROOT/BENCHMARKS.md" "${bins[@]}" "$@"
}

if [ "$WEAR_ONLY" = 1 ]; then
    say "building the release binary"
    cargo build --release --bin profilo-gateway
    bash scripts/setup-test-env.sh
    mkdir -p "$WORK"
    wear "$@"
    exit 0
fi

say "building the release binary and the enqueue bench"
cargo build --release --bin profilo-gateway --example enqueue_bench

if ! command -v wrk >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "installing wrk with apt-get"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk
    else
        say "error: wrk is missing (apt-get install wrk)" >&2
        exit 1
    fi
fi

# The test server's venv and template DB (idempotent), plus requests for the naive client.
bash scripts/setup-test-env.sh
VPY="$ROOT/tests/server/.venv/bin/python"
if ! "$VPY" -c 'import requests' >/dev/null 2>&1; then
    say "installing requests into $ROOT/tests/server/.venv (for the naive client)"
    "$VPY" -m pip install --disable-pip-version-check -q requests
fi

rm -rf "$WORK"
mkdir -p "$WORK"
fs="$(stat -f -c %T "$WORK")"
case "$fs" in
    tmpfs|overlayfs|ramfs) say "warning: $WORK is on $fs: write_bytes will not count disk writes; set BENCH_DIR" ;;
esac

python3 "$ROOT/scripts/bench/run_bench.py" --root "$ROOT" --work "$WORK" --command "$COMMAND" "$@"
say "(W) SD card wear"
wear
exec python3 "$ROOT/scripts/bench/answers_bench.py" --root "$ROOT" --work "$WORK"
