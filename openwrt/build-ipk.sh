#!/usr/bin/env bash
# Builds prebuilt OpenWrt packages (.ipk) from the static binaries in dist/, and a signed feed
# index for them:
#   dist/openwrt/<pkgarch>/nnc-agent_<version>_<pkgarch>.ipk   ar: debian-binary, control.tar.gz, data.tar.gz
#   dist/openwrt/Packages, Packages.gz, Packages.sig           usign/signify ed25519 signature
# usage: build-ipk.sh SECRET_KEY [TARGET...]   (SECRET_KEY: a signify-openbsd / usign secret key)
set -euo pipefail
cd "$(dirname "$0")/.."
source cross/env.sh
key=$1; shift
targets=("$@"); [ ${#targets[@]} -gt 0 ] || targets=("${NNC_TARGETS[@]}")
version=$(awk -F'"' '/^version *=/ {print $2; exit}' Cargo.toml)-r1
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
out="$NNC_DIST/openwrt"
rm -rf "$out"; mkdir -p "$out"

pkgarch() {  # the OpenWrt package architecture of the board a target is built for
  case $1 in
    x86_64-*) echo x86_64 ;; aarch64-*) echo aarch64_generic ;;
    armv7-*) echo arm_cortex-a7_neon-vfpv4 ;; mipsel-*) echo mipsel_24kc ;; mips-*) echo mips_24kc ;;
  esac
}
board_of() {
  case $1 in armv7-*) echo ipq40xx ;; mipsel-*) echo mt7621 ;; mips-*) echo ath79 ;; *) echo "" ;; esac
}
tgz() {  # tgz OUT DIR: a reproducible tar.gz of DIR's contents, owned by root
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" -C "$2" -cf - . | gzip -9n > "$1"
}

for t in "${targets[@]}"; do
  bin="$NNC_DIST/$t/nnc-agent"
  [ -f "$bin" ] || { echo "build-ipk.sh: $bin missing (run cross/build.sh $t)" >&2; exit 1; }
  arch=$(pkgarch "$t")
  work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
  mkdir -p "$work/data/usr/bin" "$work/data/etc/init.d" "$work/data/etc/config" "$work/data/etc/uci-defaults" "$work/control"
  install -m 0755 "$bin" "$work/data/usr/bin/nnc-agent"
  install -m 0755 openwrt/files/nnc.init "$work/data/etc/init.d/nnc"
  install -m 0644 openwrt/files/nnc.config "$work/data/etc/config/nnc"
  install -m 0644 openwrt/files/nnc.uci-defaults "$work/data/etc/uci-defaults/90-nnc-firewall"
  sed -i "s/^\toption board ''/\toption board '$(board_of "$t")'/" "$work/data/etc/config/nnc"
  size=$(du -sb "$work/data" | cut -f1)
  cat > "$work/control/control" <<CTL
Package: nnc-agent
Version: $version
Depends: ca-bundle, kmod-8021q, kmod-veth, kmod-macvlan, nftables
Source: feeds/nnc/net/nnc-agent
SourceName: nnc-agent
License: MIT
Section: net
SourceDateEpoch: $epoch
Maintainer: nnc-agent developers
Architecture: $arch
Installed-Size: $size
Description: Installs, isolates and supervises network services (Tor, sing-box, Xray)
 on the router; one GraphQL call per install. Static binary for $t.
CTL
  echo /etc/config/nnc > "$work/control/conffiles"
  # On a live system: the firewall zone now (at first boot uci-defaults would run it), then start.
  printf '#!/bin/sh\n[ -n "${IPKG_INSTROOT}" ] || {\n  d=/etc/uci-defaults/90-nnc-firewall\n  [ -f $d ] && ( . $d ) && rm -f $d && /etc/init.d/firewall reload\n  /etc/init.d/nnc enable; /etc/init.d/nnc start; }\nexit 0\n' > "$work/control/postinst"
  printf '#!/bin/sh\n[ -n "${IPKG_INSTROOT}" ] || { /etc/init.d/nnc stop; /etc/init.d/nnc disable; }\nexit 0\n' > "$work/control/prerm"
  chmod 0755 "$work/control/postinst" "$work/control/prerm"
  tgz "$work/control.tar.gz" "$work/control"
  tgz "$work/data.tar.gz" "$work/data"
  echo "2.0" > "$work/debian-binary"
  mkdir -p "$out/$arch"
  ipk="$out/$arch/nnc-agent_${version}_${arch}.ipk"
  (cd "$work" && ar -rcD "$ipk" debian-binary control.tar.gz data.tar.gz)
  # The feed index stanza: the control fields plus where the file is and what it hashes to.
  {
    grep -v '^Description\|^ ' "$work/control/control"
    echo "Filename: $arch/$(basename "$ipk")"
    echo "Size: $(stat -c %s "$ipk")"
    echo "SHA256sum: $(sha256sum "$ipk" | cut -d' ' -f1)"
    sed -n '/^Description/,$p' "$work/control/control"
    echo
  } >> "$out/Packages"
  rm -rf "$work"; trap - EXIT
  echo "build-ipk.sh: $ipk"
done
gzip -9nc "$out/Packages" > "$out/Packages.gz"
signify-openbsd -S -s "$key" -m "$out/Packages" -x "$out/Packages.sig"
echo "build-ipk.sh: signed $out/Packages"
