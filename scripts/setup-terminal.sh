#!/usr/bin/env bash
# Installs what tests/test_cli.py needs to drive the `durably` command on a real
# terminal, idempotently: Debian's tmux when missing (apt-get).
set -euo pipefail
cd "$(dirname "$0")/.."
SETUP=setup-terminal
. scripts/lib.sh
need tmux tmux
echo "setup-terminal: ready" >&2
