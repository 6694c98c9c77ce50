#!/usr/bin/env bash
# The whole test suite: unit tests and real-QEMU end-to-end tests. Host assets are built once into
# a shared cache; every test file gets its own CELL_HOME and celld and cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
bash scripts/test-deps.sh

export CELL_CACHE="${CELL_CACHE:-$PWD/.cell-test/cache}"
# No VM of the suite is online unless its test confines celld to namespaces of its own (the rule for
# network tests: nothing may leave this machine). This reaches cellds the SDK starts on demand too.
export CELL_NETWORK=off
mkdir -p "$CELL_CACHE"
setup_home=$(mktemp -d /tmp/cell-setup-XXXXXX)
cleanup_setup() {
  if [ -f "$setup_home/celld.pid" ]; then kill "$(cat "$setup_home/celld.pid")" 2>/dev/null || true; fi
  rm -rf "$setup_home"
  # celld made this home's guest RAM folder on /dev/shm (domain/paths.ts names it by the home's hash).
  rm -rf "/dev/shm/cellvm-$(printf %s "$setup_home" | sha256sum | cut -c1-12)"
}
trap cleanup_setup EXIT
echo "[test] host set-up (cached after the first run)"
CELL_HOME="$setup_home" bin/cell setup
cleanup_setup
trap - EXIT

mapfile -t files < <(find test -name '*.test.ts' | sort)
before=$(pgrep -c -f '^qemu-system' || true)
status=0
node --import tsx --test --test-concurrency=1 --test-reporter=spec "${files[@]}" || status=$?

after=$(pgrep -a -f '^qemu-system.*/tmp/cellt-' || true)
if [ -n "$after" ]; then
  echo "[test] FAIL: QEMU processes left behind by the tests:"
  echo "$after"
  status=1
fi
exit $status
