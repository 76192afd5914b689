#!/usr/bin/env bash
# Builds prebuilt OpenWrt packages (.ipk) from the static binaries in dist/, and a signed feed
# index for them:
#   dist/openwrt/<pkgarch>/nnc-agent_<version>_<pkgarch>.ipk   ar: debian-binary, control.tar.gz, data.tar.gz
#   dist/openwrt/Packages, Packages.gz, Packages.sig           usign/signify ed25519 signature
# usage: build-ipk.sh SECRET_KEY [TARGET...]   (SECRET_KEY: a signify-openbsd / usign secret key)
set -euo pipefail
cd "$(dirname "$0")/.."
source openwrt/common.sh "$@"
out="$NNC_DIST/openwrt"
rm -rf "$out"; mkdir -p "$out"

tgz() {  # tgz OUT DIR: a reproducible tar.gz of DIR's contents, owned by root
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" -C "$2" -cf - . | gzip -9n > "$1"
}

for t in "${targets[@]}"; do
  arch=$(pkgarch "$t")
  work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
  mkdir -p "$work/control"
  stage_tree "$work/data" "$t"
  size=$(du -sb "$work/data" | cut -f1)
  cat > "$work/control/control" <<CTL
Package: nnc-agent
Version: $version
Depends: ${depends// /, }
Source: feeds/nnc/net/nnc-agent
SourceName: nnc-agent
License: MIT
Section: net
SourceDateEpoch: $epoch
Maintainer: nnc-agent developers
Architecture: $arch
Installed-Size: $size
Description: $summary
 on the router; one GraphQL call per install. Static binary for $t.
CTL
  echo /etc/config/nnc > "$work/control/conffiles"
  printf '%s' "$postinst" > "$work/control/postinst"
  printf '%s' "$prerm" > "$work/control/prerm"
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
