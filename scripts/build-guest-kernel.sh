#!/usr/bin/env bash
# Builds a guest kernel for cellvm from Debian's linux-source (6.1, the same as the cloud kernel celld
# boots by default): `make tinyconfig` plus scripts/guest-kernel/minimal.config, every driver the
# guest needs built in, no modules. Boots in ~0.57x the time of Debian's kernel under TCG
# (bench/built-kernel.sh). Give the path it prints to celld as CELL_GUEST_KERNEL, or as
# "guestKernel" in CELL_HOME/config.json (docs/guest-kernel.md).
#
# Idempotent: the kernel is cached by the config's settings under $CELL_CACHE/kernel-build (the
# source, ~140 MB of download and ~1.3 GB unpacked and built, stays there for the next build).
# Needs root for apt-get (the build tools and the source package). Takes 3-9 minutes on 2 cores.
# Usage: bash scripts/build-guest-kernel.sh      (progress on stderr, the kernel's path on stdout)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
config="$repo/scripts/guest-kernel/minimal.config"
if [ -z "${CELL_CACHE:-}" ]; then
  if [ -n "${CELL_HOME:-}" ]; then home=$CELL_HOME
  elif [ "$(id -u)" = 0 ]; then home=/var/lib/cellvm
  else home="${XDG_DATA_HOME:-$HOME/.local/share}/cellvm"; fi
  CELL_CACHE="$home/cache"
fi
work="$CELL_CACHE/kernel-build"
say() { echo "[guest-kernel] $*" >&2; }

# By its settings, not its comments.
config_hash=$(grep -E '^(# )?CONFIG_' "$config" | sha256sum | cut -c1-16)
kernel="$work/vmlinux-$config_hash"
if [ -f "$kernel" ]; then
  say "cached"
  echo "$kernel"
  exit 0
fi
mkdir -p "$work"
say "installing the build tools (apt)"
apt-get install -y -q --no-install-recommends flex bison libelf-dev bc make gcc xz-utils >/dev/null

src=$(find "$work" -maxdepth 1 -type d -name 'linux-source-*' | head -1)
if [ -z "$src" ]; then
  say "downloading and unpacking Debian's linux-source-6.1"
  (cd "$work" && apt-get download -q linux-source-6.1 >/dev/null 2>&1)
  # Unpacked beside, moved into place whole: a killed unpack leaves no half tree to build from.
  rm -rf "$work/unpack" && mkdir "$work/unpack"
  dpkg-deb --fsys-tarfile "$work"/linux-source-6.1_*.deb | tar -x -O --wildcards './usr/src/linux-source-*.tar.xz' | tar -xJ -C "$work/unpack"
  rm -f "$work"/linux-source-6.1_*.deb
  mv "$work"/unpack/linux-source-* "$work/" && rmdir "$work/unpack"
  src=$(find "$work" -maxdepth 1 -type d -name 'linux-source-*' | head -1)
fi
started=$(date +%s)
say "configuring (tinyconfig + $(basename "$config"))"
make -C "$src" ARCH=x86_64 tinyconfig >/dev/null
"$src/scripts/kconfig/merge_config.sh" -m -O "$src" "$src/.config" "$config" >"$work/config.log" 2>&1
make -C "$src" ARCH=x86_64 olddefconfig >/dev/null
say "building vmlinux on $(nproc) cores (log: $work/build.log)"
make -C "$src" ARCH=x86_64 -j"$(nproc)" vmlinux >"$work/build.log" 2>&1 || { tail -20 "$work/build.log" >&2; exit 1; }
# Every setting asked for must have survived olddefconfig (a dependency missing drops it silently).
missing=$(grep -E '^CONFIG_[A-Z0-9_]+=y$' "$config" | while read -r line; do grep -qx "$line" "$src/.config" || echo "$line"; done)
if [ -n "$missing" ]; then say "settings the build dropped (their dependencies are missing): $missing"; exit 1; fi
cp "$src/vmlinux" "$kernel.tmp" && sync "$kernel.tmp" && mv "$kernel.tmp" "$kernel"
say "built in $(( $(date +%s) - started )) s"
echo "$kernel"
