#!/usr/bin/env bash
# Idempotent project set-up from a fresh clone: node dependencies (better-sqlite3 builds from
# source here) and the compiled CLI/daemon. Host packages, the guest kernel, the initramfs and the
# built-in image are set up by `cell setup` itself (run on demand by the other commands).
set -euo pipefail
cd "$(dirname "$0")/.."

stamp=node_modules/.cellvm-installed
if [ ! -f "$stamp" ] || [ package-lock.json -nt "$stamp" ]; then
  echo "[bootstrap] installing node dependencies (first time: about a minute, better-sqlite3 compiles)"
  npm ci --no-audit --no-fund --loglevel=error
  touch "$stamp"
fi
echo "[bootstrap] compiling TypeScript"
npm run --silent build
