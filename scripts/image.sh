#!/usr/bin/env bash
# Builds the jetplug container image with no registry: FROM scratch, holding
# the jetplug binary and the shared libraries it links (taken from this
# machine), CA certificates, the shipped plugins, a non-root user (65532),
# and the compiled-component cache as a volume. `make image` runs it on a
# release build; the published ../Containerfile builds the same image from
# source on a standard base.
#
# usage: scripts/image.sh [--binary PATH] [--tag NAME:TAG] [--out DIR] [--stage-only]
#   --binary      the jetplug binary (default target/release/jetplug)
#   --tag         image name (default jetplug:<version>)
#   --out         where the build context is staged (default target/image)
#   --stage-only  stage the root file system, build no image
# Uses podman, else docker with a running engine; without either, the
# staged root file system is all it makes (and it says so, exit 1).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
binary="$root/target/release/jetplug"
out="$root/target/image"
tag=""
stage_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --stage-only) stage_only=1; shift ;;
    *) echo "image: unknown argument $1" >&2; exit 2 ;;
  esac
done
say() { printf 'image: %s\n' "$*"; }
[ -x "$binary" ] || { say "no jetplug binary at $binary (cargo build --release -p jetplug)"; exit 1; }
version="$("$binary" --version | awk '{print $2}')"
[ -n "$tag" ] || tag="jetplug:$version"

rm -rf "$out"
rootfs="$out/rootfs"
mkdir -p "$rootfs/usr/local/bin" "$rootfs/usr/lib/jetplug/plugins" "$rootfs/etc/ssl/certs" \
  "$rootfs/etc/jetplug" "$rootfs/tmp" "$out/cache"
chmod 1777 "$rootfs/tmp"
chmod 0700 "$out/cache"
install -m 0755 "$binary" "$rootfs/usr/local/bin/jetplug"

# The shared libraries the binary links, at the paths the loader expects.
ldd "$binary" | awk '$3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | while read -r lib; do
  mkdir -p "$rootfs$(dirname "$lib")"
  cp -L "$lib" "$rootfs$lib"
done
for ca in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
  if [ -f "$ca" ]; then cp -L "$ca" "$rootfs/etc/ssl/certs/ca-certificates.crt"; break; fi
done
printf 'root:x:0:0:root:/root:/sbin/nologin\njetplug:x:65532:65532:jetplug:/nonexistent:/sbin/nologin\n' > "$rootfs/etc/passwd"
printf 'root:x:0:\njetplug:x:65532:\n' > "$rootfs/etc/group"

plugins="$root/target/plugins/wasm32-wasip2/release"
for p in postgres_indexer analytics_aggregator dlq_router; do
  if [ -f "$plugins/$p.wasm" ]; then
    install -m 0644 "$plugins/$p.wasm" "$rootfs/usr/lib/jetplug/plugins/$p.wasm"
  else
    say "note: $p.wasm not built (make plugins); the image ships without it"
  fi
done
cp "$root/deploy/container/Containerfile.scratch" "$out/Containerfile"
say "root file system staged in $rootfs ($(du -sh "$rootfs" | cut -f1))"
[ "$stage_only" -eq 0 ] || exit 0

if command -v podman >/dev/null 2>&1; then
  engine=podman
elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  engine=docker
else
  say "neither podman nor a running docker engine: no image built (install podman: apt-get install podman)"
  exit 1
fi
"$engine" build --quiet -t "$tag" -f "$out/Containerfile" "$out" >/dev/null
say "built $tag with $engine"
echo "$tag"
