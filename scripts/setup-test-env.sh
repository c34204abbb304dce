#!/usr/bin/env bash
# Prepares what the integration tests need: the Django + SimpleJWT test server's
# virtualenv (tests/server/.venv) and its migrated template DB
# (tests/server/template.sqlite3). Idempotent: a second run does nothing slow.
#
# Usage: scripts/setup-test-env.sh        (PYTHON=python3.11 to choose the interpreter)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SERVER="$ROOT/tests/server"
VENV="$SERVER/.venv"
REQS="$SERVER/requirements.txt"
STAMP="$VENV/.requirements.sha256"
TEMPLATE="$SERVER/template.sqlite3"
PYTHON="${PYTHON:-python3}"

say() { echo "setup-test-env: $*"; }

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "no $PYTHON: installing python3 with apt-get"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv
    else
        say "error: $PYTHON not found; install Python 3.10+ (with venv) and rerun" >&2
        exit 1
    fi
fi

# A venv without pip (Debian without python3-venv) is as broken as no venv.
if [ -x "$VENV/bin/python" ] && ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
    say "removing broken virtualenv $VENV"
    rm -rf "$VENV"
fi

if [ ! -x "$VENV/bin/python" ]; then
    if ! "$PYTHON" -m venv --help >/dev/null 2>&1 || ! "$PYTHON" -c 'import ensurepip' >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            pyver="$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
            say "python venv module missing: installing python3-venv with apt-get"
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "python${pyver}-venv" \
                || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
        else
            say "error: '$PYTHON -m venv' is unavailable; install python3-venv and rerun" >&2
            exit 1
        fi
    fi
    say "creating virtualenv $VENV ($("$PYTHON" --version 2>&1))"
    "$PYTHON" -m venv "$VENV"
fi

want="$(sha256sum "$REQS" | cut -d' ' -f1)"
have="$(cat "$STAMP" 2>/dev/null || true)"
if [ "$want" != "$have" ]; then
    say "installing $REQS into $VENV"
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q -r "$REQS"
    echo "$want" >"$STAMP"
    rm -f "$TEMPLATE"
else
    say "requirements already installed ($VENV)"
fi

# Rebuild the template DB when missing or older than any migration or model.
newest_src="$(find "$SERVER/readings" "$SERVER/profilo_server" -name '*.py' -newer "$TEMPLATE" 2>/dev/null | head -1 || true)"
if [ ! -f "$TEMPLATE" ] || [ -n "$newest_src" ]; then
    say "building template DB $TEMPLATE"
    (cd "$SERVER" && PROFILO_TEST_CONTROL=1 "$VENV/bin/python" manage.py build_template_db "$TEMPLATE")
else
    say "template DB up to date ($TEMPLATE)"
fi
say "ready"
