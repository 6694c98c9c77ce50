#!/usr/bin/env bash
# From a fresh clone to a command running in a microVM.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
bin/cell setup
bin/cell info
echo
echo '$ cell run --rm busybox -- sh -c '"'"'echo "hello from $(hostname), kernel $(uname -r)"'"'"
bin/cell run --rm busybox -- sh -c 'echo "hello from $(hostname), kernel $(uname -r)"'
