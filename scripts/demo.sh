#!/usr/bin/env bash
# From a fresh clone to a command in a microVM, then a snapshot of a warm VM forked three times.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
cell() { echo "\$ cell $*" >&2; bin/cell "$@"; }

cell setup
cell info
echo
cell run --rm busybox -- sh -c 'echo "hello from $(hostname), kernel $(uname -r)"'
echo
# A VM with a warm process inside (a counter standing in for a database or a REPL).
demo=demo-$$
work=$(mktemp -d)
cleanup() {
  bin/cell rm -f "$demo" "$demo-fork-1" "$demo-fork-2" "$demo-fork-3" >/dev/null 2>&1 || true
  bin/cell snapshot rm "$demo-warm" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
cell run -d --name "$demo" busybox >/dev/null
cell exec "$demo" -- sh -c '(i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.1; done) >/dev/null 2>&1 &'
sleep 1
cell snapshot --name "$demo-warm" "$demo" >/dev/null
time bin/cell fork --count 3 --name "$demo-fork" "$demo-warm" >/dev/null
for i in 1 2 3; do
  cell exec "$demo-fork-$i" -- sh -c 'echo "$(hostname): counter at $(cat /tmp/counter), still counting"'
done
cell snapshots --tree
echo
# A build: every step runs in a VM forked from the previous step's snapshot and is cached.
cat > "$work/build.toml" <<'TOML'
base = "busybox"
[[step]]
run = "echo building; mkdir -p /srv && date > /srv/built-at"
[[step]]
env = { GREETING = "hello from a build" }
TOML
cell build -f "$work/build.toml" -t "$demo-built"
cell build -f "$work/build.toml" -t "$demo-built"   # unchanged: every step is a cache hit
cell run --rm --from "$demo-built" -- sh -c 'echo "$GREETING, built at $(cat /srv/built-at)"'
