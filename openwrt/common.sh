# Shared by build-ipk.sh and build-apk.sh (sourced with their arguments, from the checkout's
# root): the key and targets they were given, and what the package holds for each target.
source cross/env.sh
key=$1; shift
targets=("$@"); [ ${#targets[@]} -gt 0 ] || targets=("${NNC_TARGETS[@]}")
version=$(awk -F'"' '/^version *=/ {print $2; exit}' Cargo.toml)-r1
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
depends="ca-bundle kmod-8021q kmod-veth kmod-macvlan nftables"
summary="Installs, isolates and supervises network services (Tor, sing-box, Xray)"

pkgarch() {  # the OpenWrt package architecture of the board a target is built for
  case $1 in
    x86_64-*) echo x86_64 ;; aarch64-*) echo aarch64_generic ;;
    armv7-*) echo arm_cortex-a7_neon-vfpv4 ;; mipsel-*) echo mipsel_24kc ;; mips-*) echo mips_24kc ;;
  esac
}
board_of() {
  case $1 in armv7-*) echo ipq40xx ;; mipsel-*) echo mt7621 ;; mips-*) echo ath79 ;; *) echo "" ;; esac
}
stage_tree() {  # stage_tree DIR TARGET: the installed files of the package for TARGET under DIR
  local dir=$1 t=$2 bin="$NNC_DIST/$2/nnc-agent"
  umask 022  # the directories' modes go into the package
  [ -f "$bin" ] || { echo "$0: $bin missing (run cross/build.sh $t)" >&2; return 1; }
  install -d -m 0755 "$dir" "$dir/usr/bin" "$dir/etc/init.d" "$dir/etc/config" "$dir/etc/uci-defaults"
  install -m 0755 "$bin" "$dir/usr/bin/nnc-agent"
  install -m 0755 openwrt/files/nnc.init "$dir/etc/init.d/nnc"
  install -m 0644 openwrt/files/nnc.config "$dir/etc/config/nnc"
  install -m 0644 openwrt/files/nnc.uci-defaults "$dir/etc/uci-defaults/90-nnc-firewall"
  sed -i "s/^\toption board ''/\toption board '$(board_of "$t")'/" "$dir/etc/config/nnc"
}
# On a live system: the firewall zone now (at first boot uci-defaults would run it), then start.
postinst='#!/bin/sh
[ -n "${IPKG_INSTROOT}" ] || {
  d=/etc/uci-defaults/90-nnc-firewall
  [ -f $d ] && ( . $d ) && rm -f $d && /etc/init.d/firewall reload
  /etc/init.d/nnc enable; /etc/init.d/nnc start; }
exit 0
'
# apk runs post-upgrade, not post-install, on an upgrade: the new binary has to be started.
postupg=${postinst/nnc start;/nnc restart;}
prerm='#!/bin/sh
[ -n "${IPKG_INSTROOT}" ] || { /etc/init.d/nnc stop; /etc/init.d/nnc disable; }
exit 0
'
