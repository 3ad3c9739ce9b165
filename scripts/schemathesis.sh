#!/usr/bin/env bash
# Runs schemathesis (PyPI) against /openapi.json of a freshly started sessiond:
# every operation but the SSE stream (which never ends) gets generated valid
# and invalid requests; the run fails on any 5xx, on a response that does not
# match the spec (status, content type, headers, body schema), on an invalid
# request that is accepted, and on a valid one that is refused.
#
#   scripts/schemathesis.sh            # 100 examples per operation
#   EXAMPLES=1000 scripts/schemathesis.sh
#
# The coverage phase is skipped: schemathesis 4.32 crashes inside it on
# GET /sessions, and with several workers also while fuzzing (a SystemError
# "AST constructor recursion depth mismatch" in its own code under CPython
# 3.11, not a server answer): one worker, no coverage phase.
#
# schemathesis is installed once into a venv under ~/.cache (VENV to change).
set -euo pipefail
cd "$(dirname "$0")/.."

EXAMPLES="${EXAMPLES:-100}"
VENV="${VENV:-$HOME/.cache/sessiond-schemathesis}"
if [ ! -x "$VENV/bin/schemathesis" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet 'schemathesis==4.32.5'
fi

# PROFILE=release tests the release binary (what .ci/run has already built).
PROFILE="${PROFILE:-debug}"
if [ "$PROFILE" = release ]; then cargo build --quiet --release --bin sessiond; else cargo build --quiet --bin sessiond; fi
DATA=$(mktemp -d)
LOG="$DATA/sessiond.log"
cleanup() {
    if [ -n "${PID:-}" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
    rm -rf "$DATA"
}
trap cleanup EXIT

DATA_DIR="$DATA/data" PORT=0 FSYNC=never RUST_LOG=warn,sessiond=info "target/$PROFILE/sessiond" >"$LOG" 2>&1 &
PID=$!
ADDR=""
for _ in $(seq 1 200); do
    ADDR=$(grep -o 'listening on http://[0-9.:]*' "$LOG" | head -1 | sed 's|listening on ||') || true
    [ -n "$ADDR" ] && break
    kill -0 "$PID" 2>/dev/null || { cat "$LOG"; echo "schemathesis.sh: sessiond did not start" >&2; exit 2; }
    sleep 0.05
done
[ -n "$ADDR" ] || { cat "$LOG"; echo "schemathesis.sh: sessiond did not report its address" >&2; exit 2; }

# Seed sessions so that generated ids sometimes hit a live one.
for i in 1 2 3; do curl -sf -X POST "$ADDR/sessions" -H 'content-type: application/json' -d "{\"seed\": $i}" >/dev/null; done

"$VENV/bin/schemathesis" run "$ADDR/openapi.json" \
    --url "$ADDR" \
    --checks all \
    --exclude-checks use_after_free \
    --exclude-path '/events/{id}' \
    --max-examples "$EXAMPLES" \
    --seed "${SEED:-1}" \
    --workers 1 \
    --phases examples,fuzzing,stateful \
    --no-color
status=$?
if grep -q 'panicked' "$LOG"; then
    grep -B2 -A5 'panicked' "$LOG" >&2
    echo "schemathesis.sh: the server panicked" >&2
    exit 1
fi
exit $status
