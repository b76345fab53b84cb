#!/usr/bin/env bash
# Installs what tests/test_interop_node.py needs, idempotently:
#   Debian's nodejs and npm when missing (apt-get), then the npm packages of
#   tests/interop/package.json (the real @coji/durably 0.15.0 and its SQLite
#   driver), into .cache/interop/node_modules
#   (tests/interop/node_modules is a symlink to it)
# Exits non-zero when something cannot be installed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SETUP=setup-interop
. scripts/lib.sh

need node nodejs
need npm npm
CACHE="$ROOT/.cache/interop"
mkdir -p "$CACHE"
if ! cmp -s tests/interop/package.json "$CACHE/package.json" \
  || [ ! -f "$CACHE/node_modules/@coji/durably/package.json" ] \
  || [ ! -f "$CACHE/node_modules/better-sqlite3/build/Release/better_sqlite3.node" ]; then
  echo "setup-interop: npm install into $CACHE" >&2
  cp tests/interop/package.json "$CACHE/package.json"
  (cd "$CACHE" && npm install --no-audit --no-fund --loglevel=error)
fi
LINK=tests/interop/node_modules
if [ ! -L "$LINK" ] || [ "$(readlink "$LINK")" != "../../.cache/interop/node_modules" ]; then
  rm -rf "$LINK"
  ln -s ../../.cache/interop/node_modules "$LINK"
fi
echo "setup-interop: ready" >&2
