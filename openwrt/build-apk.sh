#!/usr/bin/env bash
# Builds OpenWrt 25.12 packages (apk v3: ADB schema 'pckg', deflated) from the static binaries
# in dist/, and a signed index per architecture, without apk-tools (openwrt/adb.py writes both):
#   dist/openwrt-apk/<pkgarch>/nnc-agent-<version>.apk
#   dist/openwrt-apk/<pkgarch>/packages.adb        ADB schema 'indx', ECDSA P-256 / SHA-512 SIG block
#   dist/openwrt-apk/<pkgarch>/nnc-agent-feed.pem  the public key, for the router's /etc/apk/keys/
# On the router: that .pem into /etc/apk/keys/, the index URL
# (https://HOST/<pkgarch>/packages.adb) into /etc/apk/repositories.d/customfeeds.list, then
# `apk update && apk add nnc-agent`.
# usage: build-apk.sh SECRET_KEY [TARGET...]   (SECRET_KEY: `openssl ecparam -name prime256v1 -genkey -noout`)
set -euo pipefail
cd "$(dirname "$0")/.."
source openwrt/common.sh "$@"
out="$NNC_DIST/openwrt-apk"
rm -rf "$out"; mkdir -p "$out"

for t in "${targets[@]}"; do
  arch=$(pkgarch "$t")
  work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
  stage_tree "$work/data" "$t"
  # What OpenWrt's own packages carry for apk: the file list and the conffiles (kept on upgrade
  # and sysupgrade).
  install -d -m 0755 "$work/data/lib" "$work/data/lib/apk" "$work/data/lib/apk/packages"
  (cd "$work/data" && find . -type f ! -path './lib/apk/*' | sed 's|^\.||' | LC_ALL=C sort) \
    > "$work/data/lib/apk/packages/nnc-agent.list"
  echo /etc/config/nnc > "$work/data/lib/apk/packages/nnc-agent.conffiles"
  chmod 0644 "$work/data/lib/apk/packages/"*
  printf '%s' "$postinst" > "$work/post-install"
  printf '%s' "$prerm" > "$work/pre-deinstall"
  printf '%s' "$postupg" > "$work/post-upgrade"
  mkdir -p "$out/$arch"
  apk="$out/$arch/nnc-agent-$version.apk"
  SOURCE_DATE_EPOCH=$epoch python3 openwrt/adb.py package "$apk" "$work/data" \
    name=nnc-agent version="$version" arch="$arch" license=MIT origin=feeds/nnc/net/nnc-agent \
    maintainer="nnc-agent developers" \
    description="$summary on the router; one GraphQL call per install. Static binary for $t." \
    depends="$depends" post-install="$work/post-install" post-upgrade="$work/post-upgrade" \
    pre-deinstall="$work/pre-deinstall"
  python3 openwrt/adb.py index "$out/$arch/packages.adb" "$key" "$apk"
  openssl ec -in "$key" -pubout -out "$out/$arch/nnc-agent-feed.pem" 2>/dev/null
  rm -rf "$work"; trap - EXIT
  echo "build-apk.sh: $apk"
done
