#!/usr/bin/env bash
# A guest kernel built from Debian's linux-source with bench/guest-kernel/minimal.config (drivers
# built in, no modules) against the kernel celld boots (Debian's cloud kernel, unpacked at set-up):
# bare boots to the agent's first answer, interleaved, medians, and the build's own time.
# Not used by celld: its ACPI tables do not load on this config (QEMU's microvm DSDT:
# "AE_BAD_PARAMETER During Region initialization"), so it boots with acpi=off, which needs the PIT
# back to calibrate the local APIC timer. Needs root (apt-get install of the build tools).
# Run: bash bench/built-kernel.sh   (BENCH_RUNS=7; the build is cached under $CELL_CACHE/kernel-build)
set -euo pipefail
cd "$(dirname "$0")/.."
export CELL_CACHE="${CELL_CACHE:-$PWD/.cell-test/cache}"
runs="${BENCH_RUNS:-7}"
work="$CELL_CACHE/kernel-build"
mkdir -p "$work"
apt-get install -y -q --no-install-recommends flex bison libelf-dev bc make gcc >/dev/null

src=$(find "$work" -maxdepth 1 -type d -name 'linux-source-*' | head -1)
if [ -z "$src" ]; then
  (cd "$work" && apt-get download -q linux-source-6.1 >/dev/null)
  dpkg-deb --fsys-tarfile "$work"/linux-source-6.1_*.deb | tar -x -O --wildcards './usr/src/linux-source-*.tar.xz' | tar -xJ -C "$work"
  rm -f "$work"/linux-source-6.1_*.deb
  src=$(find "$work" -maxdepth 1 -type d -name 'linux-source-*' | head -1)
fi
config_hash=$(sha256sum bench/guest-kernel/minimal.config | cut -c1-16)
kernel="$work/vmlinux-$config_hash"
if [ ! -f "$kernel" ]; then
  started=$(date +%s)
  make -C "$src" ARCH=x86_64 tinyconfig >/dev/null
  "$src/scripts/kconfig/merge_config.sh" -m -O "$src" "$src/.config" bench/guest-kernel/minimal.config >"$work/config.log" 2>&1
  make -C "$src" ARCH=x86_64 olddefconfig >/dev/null
  make -C "$src" ARCH=x86_64 -j"$(nproc)" vmlinux >"$work/build.log" 2>&1
  cp "$src/vmlinux" "$kernel.tmp" && mv "$kernel.tmp" "$kernel"
  echo "built $kernel in $(( $(date +%s) - started )) s on $(nproc) cores"
fi

# The current initramfs without its modules (they are built in).
initramfs=$(node --import tsx -e "const { ensureHostAssets } = await import('./src/host/index.js'); console.log((await ensureHostAssets({ cacheDir: process.env.CELL_CACHE, install: false })).initramfs.path)" | tail -1)
tree=$(mktemp -d /tmp/cellbench-initramfs-XXXXXX)
trap 'rm -rf "$tree"' EXIT
(cd "$tree" && zcat "$initramfs" | cpio -id --quiet && rm -rf lib/modules/* && : >etc/cell/modules && : >etc/cell/modules.share &&
  find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -9 >"$tree.cpio.gz")
trap 'rm -rf "$tree" "$tree.cpio.gz"' EXIT

ready() { grep -o 'agent ready after [0-9]*' | grep -o '[0-9]*$'; }
debian=(); built=()
for _ in $(seq "$runs"); do
  debian+=("$(BOOT_PROFILE_ARGS=' ' node --import tsx bench/boot-profile.ts 2>&1 | ready)")
  built+=("$(BOOT_PROFILE_ARGS=' ' BOOT_PROFILE_MACHINE=acpi=off,pit=on BOOT_PROFILE_KERNEL="$kernel" BOOT_PROFILE_INITRD="$tree.cpio.gz" node --import tsx bench/boot-profile.ts 2>&1 | ready)")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
d=$(median "${debian[@]}"); b=$(median "${built[@]}")
echo "bare boot to agent ready, $runs interleaved runs (ms): Debian's kernel ${debian[*]}; built ${built[*]}"
echo "medians: Debian's $d ms, built $b ms: ratio $(awk "BEGIN {printf \"%.2f\", $b / $d}") ($(stat -c %s "$kernel") bytes of ELF)"
