#!/usr/bin/env bash
# Installs what the PostgreSQL tests need, idempotently (prints one line when ready):
#   - the PostgreSQL server programs (postgres, initdb): found in $DURABLY_PG_BINDIR,
#     /usr/lib/postgresql/<newest>/bin or on PATH; else Debian's `postgresql` package
#     (apt-get; root, or sudo -n)
#   - a non-root user to run the server as when we are root (the server refuses root):
#     Debian's `postgres` user, else a system user `durably-pg`
#   - the npm package `pg` (pinned; Debian's npm when missing) for the Node side of tests/test_interop_postgres.py,
#     into .cache/interop-postgres/node_modules
# Writes .cache/postgres/env (PG_BINDIR=…, PG_USER=…), which tests/postgres_support.py reads.
# The tests start their own server on a free 127.0.0.1 port in a temporary directory
# and stop it by PID; nothing here starts a server.
# Exits non-zero when something cannot be installed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PG_NPM_VERSION="8.23.1"
CACHE="$ROOT/.cache/postgres"
mkdir -p "$CACHE"

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo -n"; fi

find_bindir() {
  if [ -n "${DURABLY_PG_BINDIR:-}" ] && [ -x "$DURABLY_PG_BINDIR/postgres" ]; then
    echo "$DURABLY_PG_BINDIR"; return 0
  fi
  local dir
  for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -V -r); do
    if [ -x "$dir/postgres" ] && [ -x "$dir/initdb" ]; then echo "$dir"; return 0; fi
  done
  local exe
  exe=$(command -v postgres 2>/dev/null || true)
  if [ -n "$exe" ] && [ -x "$(dirname "$exe")/initdb" ]; then dirname "$exe"; return 0; fi
  return 1
}

BINDIR=$(find_bindir || true)
if [ -z "$BINDIR" ]; then
  echo "setup-postgres: installing Debian's postgresql" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y --no-install-recommends postgresql >/dev/null 2>&1 \
    || { $SUDO apt-get update -qq && $SUDO apt-get install -y --no-install-recommends postgresql >/dev/null; }
  BINDIR=$(find_bindir || true)
fi
[ -n "$BINDIR" ] || { echo "setup-postgres: no postgres/initdb found after installing" >&2; exit 1; }
"$BINDIR/postgres" --version >/dev/null || { echo "setup-postgres: $BINDIR/postgres does not run" >&2; exit 1; }

PG_USER=""
if [ "$(id -u)" = 0 ]; then
  if id postgres >/dev/null 2>&1; then
    PG_USER=postgres
  else
    id durably-pg >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin durably-pg
    PG_USER=durably-pg
  fi
fi

NODE_CACHE="$ROOT/.cache/interop-postgres"
if [ ! -f "$NODE_CACHE/node_modules/pg/package.json" ] \
  || [ "$(cat "$NODE_CACHE/.installed-version" 2>/dev/null)" != "$PG_NPM_VERSION" ]; then
  SETUP=setup-postgres
  . scripts/lib.sh
  need npm npm
  mkdir -p "$NODE_CACHE"
  echo "setup-postgres: npm install pg@$PG_NPM_VERSION into $NODE_CACHE" >&2
  npm install --prefix "$NODE_CACHE" --no-save --no-audit --no-fund --loglevel=error \
    "pg@$PG_NPM_VERSION"
  echo "$PG_NPM_VERSION" > "$NODE_CACHE/.installed-version"
fi

printf 'PG_BINDIR=%s\nPG_USER=%s\n' "$BINDIR" "$PG_USER" > "$CACHE/env.tmp"
mv "$CACHE/env.tmp" "$CACHE/env"
echo "setup-postgres: ready ($("$BINDIR/postgres" --version), user ${PG_USER:-$(id -un)})" >&2
