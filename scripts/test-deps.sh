#!/usr/bin/env bash
# Host tools the tests use as real peers (not needed to run cellvm): Debian's CNCF Distribution
# registry, skopeo and umoci to cross-check our OCI code, cpio to check our cpio writer, zstd and
# openssl to build test layers and token-auth keys, xfsprogs for a loop-mounted file system with
# reflinks (snapshots sharing their parents' pages), Debian's chromium for the dashboard's browser test. Idempotent: installs only what is missing.
set -euo pipefail
need=()
for pair in docker-registry:docker-registry skopeo:skopeo umoci:umoci cpio:cpio zstd:zstd openssl:openssl debugfs:e2fsprogs mkfs.xfs:xfsprogs chromium:chromium; do
  cmd=${pair%%:*}; pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/bin/$cmd" ] || [ -x "/usr/sbin/$cmd" ] || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "[test-deps] installing ${need[*]}"
  if [ "$(id -u)" -ne 0 ]; then echo "[test-deps] need root to apt-get install ${need[*]}" >&2; exit 1; fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
