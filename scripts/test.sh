#!/usr/bin/env bash
# THE test command: prepares the test server, then runs every test (unit + integration).
# Extra arguments go to `cargo test` (e.g. scripts/test.sh -- --nocapture).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/setup-test-env.sh
echo "test.sh: cargo test --all-targets --no-fail-fast $*"
cargo test --all-targets --no-fail-fast "$@"
