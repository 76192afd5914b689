#!/usr/bin/env bash
# Installs the cross toolchain: nightly with rust-src (for -Zbuild-std), rustup's aarch64/x86_64
# musl std, Debian's aarch64 cross gcc and its libc headers (ring's C code), zig +
# cargo-zigbuild from PyPI, QEMU (user and system, from bookworm-backports: the image's
# qemu-utils 10 conflicts with bookworm's qemu 7.2), the tools the packaging checks use, and
# the VM kernels (fetched here, one after another, so parallel VM tests never race on apt).
set -euo pipefail
source "$(dirname "$0")/env.sh"
sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo

if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || echo http://deb.debian.org/debian)
  printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$mirror" |
    $sudo tee /etc/apt/sources.list.d/bookworm-backports.sources >/dev/null
  $sudo apt-get update -qq
fi
need=(); for p in gcc-aarch64-linux-gnu binutils-aarch64-linux-gnu libc6-dev-arm64-cross cpio file xz-utils zstd signify-openbsd skopeo; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
bp=(); for p in qemu-user-static qemu-system-x86 qemu-system-arm qemu-system-mips; do
  dpkg -s "$p" >/dev/null 2>&1 || bp+=("$p")
done
if [ ${#need[@]} -gt 0 ] || [ ${#bp[@]} -gt 0 ]; then
  $sudo apt-get update -qq
  [ ${#need[@]} -gt 0 ] && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  [ ${#bp[@]} -gt 0 ] && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends -t bookworm-backports "${bp[@]}" >/dev/null
fi

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
rustup component list --toolchain nightly --installed | grep -q '^rust-src' || rustup component add rust-src --toolchain nightly
installed=$(rustup target list --installed)
for t in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
  grep -qx "$t" <<<"$installed" || rustup target add "$t"
done

venv="$NNC_CACHE/venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
# zig 0.15.2, not newer: from 0.16 zig's libc replaces musl's malloc (mallocng) with a
# wrapper over Zig's SmpAllocator, whose per-thread free lists never hand memory freed on one
# thread back to another: the agent's RSS grew ~10 KiB per install/uninstall cycle without
# bound (blocking download threads free what the runtime thread allocated), and each
# subscriber cost twice as much. A version check, so a cache with another zig is corrected.
zig=0.15.2
[ "$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("ziglang"))' 2>/dev/null)" = "$zig" ] &&
  [ -x "$venv/bin/cargo-zigbuild" ] ||
  "$venv/bin/pip" install -q --disable-pip-version-check "ziglang==$zig" 'cargo-zigbuild==0.24.1'

for a in amd64 arm64 mipsel; do bash "$(dirname "$0")/vm/fetch.sh" "$a"; done
