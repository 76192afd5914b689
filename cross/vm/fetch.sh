#!/usr/bin/env bash
# Fetches (once, cached) what a VM of ARCH boots: Debian's kernel and modules, and Debian's
# busybox-static for the initramfs. ARCH is amd64, arm64 or mipsel.
#   out: $NNC_CACHE/vm/ARCH/{kernel, modules/lib/modules/<ver>/..., busybox, VERSION}
set -euo pipefail
source "$(dirname "$0")/../env.sh"
arch=$1
out="$NNC_CACHE/vm/$arch"
[ -s "$out/kernel" ] && [ -x "$out/busybox" ] && exit 0
# VM tests run in parallel and each may fetch: apt and dpkg take exclusive locks, so callers
# queue on one lock of ours and the second finds the cache filled by the first.
mkdir -p "$NNC_CACHE/vm"
exec 9>"$NNC_CACHE/vm/.fetch.lock"
flock 9
[ -s "$out/kernel" ] && [ -x "$out/busybox" ] && exit 0
sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
case $arch in
  amd64) meta=linux-image-amd64 ;;
  arm64) meta=linux-image-arm64 ;;
  mipsel) meta=linux-image-4kc-malta ;;
  *) echo "fetch.sh: unknown arch $arch" >&2; exit 2 ;;
esac
if [ "$arch" != amd64 ] && ! dpkg --print-foreign-architectures | grep -qx "$arch"; then
  $sudo dpkg --add-architecture "$arch"
  $sudo apt-get update -qq
fi
# The meta package depends on the current versioned image package.
pkg=$(apt-cache depends "$meta:$arch" 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
pkg=${pkg%%:*}
[ -n "$pkg" ] || { echo "fetch.sh: cannot resolve $meta:$arch (apt-get update?)" >&2; exit 1; }
work=$(mktemp -d "${TMPDIR:-/tmp}/nnc-vmfetch.XXXX")
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"  # apt downloads as _apt
( cd "$work" && apt-get download -qq "$pkg:$arch" "busybox-static:$arch" )
rm -rf "$out"; mkdir -p "$out/modules"
dpkg-deb -x "$work"/linux-image-*.deb "$out/modules"
dpkg-deb -x "$work"/busybox-static*.deb "$work/bb"
cp "$work/bb/bin/busybox" "$out/busybox"
# amd64/arm64 ship a compressed vmlinuz; malta boots the ELF vmlinux.
k=$(ls "$out"/modules/boot/vmlinu[xz]-* | head -1)
mv "$k" "$out/kernel"
ls "$out/modules/lib/modules" > "$out/VERSION"
rm -rf "$out/modules/boot" "$out/modules/usr"
echo "fetch.sh: $arch kernel $(cat "$out/VERSION") from $pkg"
