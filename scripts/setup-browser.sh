#!/usr/bin/env bash
# Installs what tests/test_http_browser.py needs, idempotently:
#   - Debian's chromium (apt-get; never a browser download by playwright)
#   - the npm packages of tests/browser/package.json, into .cache/browser/node_modules
#     (tests/browser/node_modules is a symlink to it)
# Exits non-zero when something cannot be installed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}

if [ ! -x "$CHROMIUM" ]; then
  echo "setup-browser: installing chromium" >&2
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo -n"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y --no-install-recommends chromium >/dev/null 2>&1 \
    || { $SUDO apt-get update -qq && $SUDO apt-get install -y --no-install-recommends chromium >/dev/null; }
fi
[ -x "$CHROMIUM" ] || { echo "setup-browser: $CHROMIUM is missing" >&2; exit 1; }

command -v npm >/dev/null || { echo "setup-browser: npm is missing" >&2; exit 1; }
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
