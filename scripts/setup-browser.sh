#!/usr/bin/env bash
# Installs what tests/test_http_browser.py needs, idempotently:
#   - Debian's chromium, nodejs and npm when missing (apt-get; never a browser
#     download by playwright)
#   - the npm packages of tests/browser/package.json, into .cache/browser/node_modules
#     (tests/browser/node_modules is a symlink to it)
# Exits non-zero when something cannot be installed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SETUP=setup-browser
. scripts/lib.sh
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}

need "$CHROMIUM" chromium
need node nodejs
need npm npm
CACHE="$ROOT/.cache/browser"
mkdir -p "$CACHE"
if ! cmp -s tests/browser/package.json "$CACHE/package.json" || [ ! -d "$CACHE/node_modules/playwright-core" ]; then
  echo "setup-browser: npm install into $CACHE" >&2
  cp tests/browser/package.json "$CACHE/package.json"
  (cd "$CACHE" && npm install --no-audit --no-fund --loglevel=error)
fi
LINK=tests/browser/node_modules
if [ ! -L "$LINK" ] || [ "$(readlink "$LINK")" != "../../.cache/browser/node_modules" ]; then
  rm -rf "$LINK"
  ln -s ../../.cache/browser/node_modules "$LINK"
fi
echo "setup-browser: ready" >&2
