#!/usr/bin/env bash
# Browser end-to-end tests of sessiond's built-in page (issue 6), in headless
# Debian Chromium driven by playwright-core against the real server binary.
#
# Installs what a fresh machine lacks (Debian's chromium, the npm packages of
# package-lock.json), builds the server (debug), runs every test in tests/ and
# exits non-zero when one fails. Screenshots go to e2e/artifacts/ (ignored).
#
#   e2e/run.sh                      # everything
#   e2e/run.sh --test-name-pattern=mobile
#   E2E_PROFILE=release e2e/run.sh  # test the release binary (CI: already built)
set -euo pipefail

E2E="$(cd "$(dirname "$0")" && pwd)"
REPO="$(dirname "$E2E")"
CHROMIUM="${CHROMIUM_PATH:-/usr/bin/chromium}"
PROFILE="${E2E_PROFILE:-debug}"
case "$PROFILE" in
  debug) build_flags=() ;;
  release) build_flags=(--release) ;;
  *) echo "e2e: E2E_PROFILE=$PROFILE is not valid: use debug or release" >&2; exit 2 ;;
esac

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if [ ! -x "$CHROMIUM" ]; then
  echo "e2e: installing Debian's chromium" >&2
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
fi

cd "$E2E"
if [ ! -d node_modules/playwright-core ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "e2e: npm ci" >&2
  npm ci --no-audit --no-fund
fi

echo "e2e: cargo build --bin sessiond ${build_flags[*]:-}" >&2
(cd "$REPO" && cargo build --bin sessiond "${build_flags[@]}")
# Tests run a private copy, so a concurrent build in the shared target/ cannot
# swap the binary under a running test.
mkdir -p .bin
cp "${CARGO_TARGET_DIR:-$REPO/target}/$PROFILE/sessiond" .bin/sessiond.new
mv .bin/sessiond.new .bin/sessiond

export SESSIOND_BIN="$E2E/.bin/sessiond" CHROMIUM_PATH="$CHROMIUM"
echo "e2e: node --test (Chromium $("$CHROMIUM" --version 2>/dev/null | awk '{print $2}'))" >&2
exec timeout 900 node --test --test-concurrency=1 "$@" tests/
