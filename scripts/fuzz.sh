#!/usr/bin/env bash
# Long runs of the fuzz-style properties over hostile input (no VM, no root needed): the agent
# frame decoder and client against a lying guest, the tar reader and layer unpacker on mutated
# archives, manifest/index and docker-save manifest parsing, build and template files and snapshot
# archive metadata, the fake internet's DNS codec. The suite runs a few hundred cases
# of each; this runs FUZZ_RUNS (default 20000) cases of every property.
#   FUZZ_RUNS=100000 scripts/fuzz.sh
#   FUZZ_SEED=<seed from a failure> scripts/fuzz.sh test/image/fuzz-tar.test.ts   # replay
set -euo pipefail
cd "$(dirname "$0")/.."
export FUZZ_RUNS="${FUZZ_RUNS:-20000}"
files=("$@")
if [ ${#files[@]} -eq 0 ]; then
  files=(test/agent/frame-decoder.test.ts test/agent/fuzz-agent.test.ts test/image/fuzz-tar.test.ts test/image/manifest.test.ts test/unit/fuzz-definitions.test.ts test/unit/dns-wire.test.ts)
fi
echo "[fuzz] $FUZZ_RUNS cases per property${FUZZ_SEED:+, seed $FUZZ_SEED}: ${files[*]}"
exec node --import tsx --test --test-concurrency=1 --test-reporter=spec "${files[@]}"
