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
# Networked where celld can (root): a web server on a published port (-p 80: any free host port).
online=$(bin/cell info | grep -q '^Network: *VMs online' && echo yes || echo no)
publish=(); [ "$online" = yes ] && publish=(-p 80)
cell run -d --name "$demo" "${publish[@]}" busybox >/dev/null
cell exec "$demo" -- sh -c '(i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.1; done) >/dev/null 2>&1 &
  mkdir -p /www/cgi-bin && printf "#!/bin/sh\nprintf \"Content-Type: text/plain\\\\r\\\\n\\\\r\\\\n\"\necho \"\$(hostname): counter at \$(cat /tmp/counter)\"\n" > /www/cgi-bin/who &&
  chmod +x /www/cgi-bin/who && (httpd -f -p 80 -h /www >/dev/null 2>&1 &)'
sleep 1
cell snapshot --name "$demo-warm" "$demo" >/dev/null
time bin/cell fork --count 3 --name "$demo-fork" "$demo-warm" >/dev/null
for i in 1 2 3; do
  cell exec "$demo-fork-$i" -- sh -c 'echo "$(hostname): counter at $(cat /tmp/counter), still counting"'
done
if [ "$online" = yes ]; then
  # Each fork serves the server it inherited, on a host port of its own, at an address of its own.
  for i in 1 2 3; do
    addr=$(bin/cell port "$demo-fork-$i" 80)
    echo "\$ curl http://$addr/cgi-bin/who" >&2
    node -e 'fetch(process.argv[1]).then((r) => r.text()).then((t) => process.stdout.write(t))' "http://$addr/cgi-bin/who"
  done
  cell ps
fi
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
