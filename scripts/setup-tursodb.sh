#!/usr/bin/env bash
# Installs the libSQL-protocol server the durably-libsql tests run against, idempotently:
#   Debian's npm when missing (apt-get), then tursodb from the npm package
#   @tursodatabase/cli-linux-x64-gnu (pinned), into .cache/tursodb/node_modules
#   (git-ignored). When it is already there it only says so.
# The tests find the binary at .cache/tursodb/node_modules/@tursodatabase/cli-linux-x64-gnu/tursodb
# (or at $DURABLY_TURSODB when set).
# Exits non-zero when it cannot be installed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PACKAGE="@tursodatabase/cli-linux-x64-gnu"
VERSION="0.7.0"
CACHE="$ROOT/.cache/tursodb"
BIN="$CACHE/node_modules/$PACKAGE/tursodb"
STAMP="$CACHE/.installed-version"

if [ -x "$BIN" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$VERSION" ]; then
  echo "setup-tursodb: ready ($BIN)" >&2
  exit 0
fi
SETUP=setup-tursodb
. scripts/lib.sh
need npm npm
mkdir -p "$CACHE"
echo "setup-tursodb: npm install $PACKAGE@$VERSION into $CACHE" >&2
(cd "$CACHE" && npm install --prefix "$CACHE" --no-save --no-audit --no-fund --loglevel=error \
  "$PACKAGE@$VERSION")
[ -x "$BIN" ] || chmod +x "$BIN" 2>/dev/null || true
[ -x "$BIN" ] || { echo "setup-tursodb: $BIN is missing after npm install" >&2; exit 1; }
"$BIN" --version >/dev/null 2>&1 || { echo "setup-tursodb: $BIN does not run" >&2; exit 1; }
echo "$VERSION" > "$STAMP"
echo "setup-tursodb: ready ($BIN)" >&2
