#!/usr/bin/env bash
# Benchmarks (figures go into README.md). Each prints ratios against a baseline run in the same script.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
for b in bench/pools.ts bench/run-vs-bare.ts bench/exec-and-memory.ts bench/snapshot-fork.ts bench/pull-vs-skopeo.ts bench/build-cache.ts bench/network.ts bench/volumes.ts bench/cli-startup.ts bench/fleet.ts bench/snapshot-registry.ts bench/snapshot-storage.ts; do
  echo "== $b"
  node --import tsx "$b"
done
