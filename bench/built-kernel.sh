#!/usr/bin/env bash
# A guest kernel built by scripts/build-guest-kernel.sh (Debian's linux-source, drivers built in, no
# modules), against the kernel celld boots by default (Debian's cloud kernel, unpacked
# at set-up): bare boots to the agent's first answer with celld's own QEMU argv, then cold
# `cell run --rm busybox -- true` through two cellds, one of them given the built kernel as its own
# (CELL_GUEST_KERNEL, docs/guest-kernel.md); interleaved, medians; and the build's own time.
# Needs root (apt-get install of the build tools).
# Run: bash bench/built-kernel.sh   (BENCH_RUNS=7; the kernel is cached under $CELL_CACHE/kernel-build)
set -euo pipefail
cd "$(dirname "$0")/.."
export CELL_CACHE="${CELL_CACHE:-$PWD/.cell-test/cache}"
runs="${BENCH_RUNS:-7}"
built_at=$(date +%s)
kernel=$(bash scripts/build-guest-kernel.sh)
echo "kernel ready after $(( $(date +%s) - built_at )) s (0 when cached): $kernel"

# The initramfs celld makes for a kernel of your own: the agent, no modules.
own_initramfs=$(node --import tsx -e "const { ensureHostAssets } = await import('./src/host/index.js'); console.log((await ensureHostAssets({ cacheDir: process.env.CELL_CACHE, install: false, guestKernel: '$kernel' })).initramfs.path)" | tail -1)

ready() { grep -o 'agent ready after [0-9]*' | grep -o '[0-9]*$'; }
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
debian=(); built=()
for _ in $(seq "$runs"); do
  debian+=("$(BOOT_PROFILE_ARGS=' ' node --import tsx bench/boot-profile.ts 2>&1 | ready)")
  built+=("$(BOOT_PROFILE_ARGS=' ' BOOT_PROFILE_KERNEL="$kernel" BOOT_PROFILE_INITRD="$own_initramfs" node --import tsx bench/boot-profile.ts 2>&1 | ready)")
done
d=$(median "${debian[@]}"); b=$(median "${built[@]}")
echo "bare boot to agent ready, $runs interleaved runs (ms): Debian's kernel ${debian[*]}; built ${built[*]}"
echo "medians: Debian's $d ms, built $b ms: ratio $(awk "BEGIN {printf \"%.2f\", $b / $d}") ($(stat -c %s "$kernel") bytes of ELF)"

# The same through celld: one celld per kernel (networking off: no bridge in the host's namespace).
deb_home=$(mktemp -d /tmp/cellb-XXXXXX); own_home=$(mktemp -d /tmp/cellb-XXXXXX)
stop_cellds() {
  for h in "$deb_home" "$own_home"; do
    [ -f "$h/celld.pid" ] && kill "$(cat "$h/celld.pid")" 2>/dev/null || true
    rm -rf "$h" "/dev/shm/cellvm-$(printf %s "$h" | sha256sum | cut -c1-12)"
  done
}
trap stop_cellds EXIT
cell_deb() { CELL_HOME=$deb_home CELL_NETWORK=off bin/cell "$@"; }
cell_own() { CELL_HOME=$own_home CELL_NETWORK=off CELL_GUEST_KERNEL=$kernel bin/cell "$@"; }
ms() { local s e; s=$(date +%s%N); "$@" >/dev/null; e=$(date +%s%N); echo $(( (e - s) / 1000000 )); }
cell_deb run --rm busybox -- true >/dev/null
echo "with the built kernel: $(cell_own run --rm busybox -- uname -r) (a first run, also the set-up)"
deb_runs=(); own_runs=()
for _ in $(seq "$runs"); do
  deb_runs+=("$(ms cell_deb run --rm busybox -- true)")
  own_runs+=("$(ms cell_own run --rm busybox -- true)")
done
dr=$(median "${deb_runs[@]}"); orr=$(median "${own_runs[@]}")
echo "cold cell run --rm busybox -- true, $runs interleaved runs (ms): Debian's kernel ${deb_runs[*]}; built ${own_runs[*]}"
echo "medians: Debian's $dr ms, built $orr ms: ratio $(awk "BEGIN {printf \"%.2f\", $orr / $dr}"); built run vs its bare boot: $(awk "BEGIN {printf \"%.3f\", $orr / $b}")"
echo "kernel: $kernel"
